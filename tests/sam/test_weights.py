"""Weights catalogue, cache and downloader, against a real HTTP server on 127.0.0.1.

Nothing here touches the real network or the user's cache: SAM2REFINE_CACHE points at a tmp
folder and downloads come from a local server (or a file:// mirror).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from sam2refine.errors import CancelledError, WeightsError
from sam2refine.sam import weights
from sam2refine.sam.weights import WeightsEntry

PAYLOAD = bytes(range(256)) * 1200  # 300 KiB stands in for a checkpoint
SLOW_CHUNK = 16 * 1024
SLOW_CHUNKS = 64


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; paths under /slow/ stream PAYLOAD in small chunks with pauses."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        try:
            if not self.path.startswith("/slow/"):
                super().do_GET()
                return
            self.send_response(200)
            self.send_header("Content-Length", str(SLOW_CHUNK * SLOW_CHUNKS))
            self.end_headers()
            for _ in range(SLOW_CHUNKS):
                self.wfile.write(b"x" * SLOW_CHUNK)
                self.wfile.flush()
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (cancelled, or refused the size)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A private cache, no proxies, no mirror override inherited from the environment."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                 "ALL_PROXY", weights.BASE_URL_ENV):
        monkeypatch.delenv(name, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(weights.CACHE_ENV, str(cache))
    return cache


@pytest.fixture
def server(tmp_path: Path):
    """(base URL, served folder) of a ThreadingHTTPServer on an ephemeral loopback port."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_Handler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()


def _entry(data: bytes = PAYLOAD, name: str = "sam2.1_hiera_tiny", **changes) -> WeightsEntry:
    fields = dict(name=name, url="https://example.invalid/never-used.pt",
                  config="configs/sam2.1/sam2.1_hiera_t.yaml", size_bytes=len(data),
                  sha256=hashlib.sha256(data).hexdigest(), description="test weights")
    fields.update(changes)
    return WeightsEntry(**fields)


@pytest.fixture
def fake_catalogue(monkeypatch: pytest.MonkeyPatch) -> WeightsEntry:
    """Replace the catalogue by one entry whose checksum matches PAYLOAD."""
    entry = _entry()
    monkeypatch.setattr(weights, "load_catalogue", lambda: {entry.name: entry})
    return entry


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- catalogue ----------------------------------------------------------------------------

def test_catalogue_lists_the_four_official_models_with_existing_configs() -> None:
    import sam2

    catalogue = weights.load_catalogue()
    assert sorted(catalogue) == sorted(["sam2.1_hiera_tiny", "sam2.1_hiera_small",
                                        "sam2.1_hiera_base_plus", "sam2.1_hiera_large"])
    package = Path(sam2.__path__[0])
    for name, entry in catalogue.items():
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything_2/")
        assert entry.url.endswith(f"/{name}.pt")
        assert (package / entry.config).is_file(), entry.config
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
        assert entry.size_bytes is None or entry.size_bytes > 100_000_000
        assert entry.source and entry.description


def test_unknown_model_lists_the_catalogue() -> None:
    with pytest.raises(WeightsError, match="sam2.1_hiera_tiny.*sam2.1_hiera_large|large.*tiny"):
        weights.resolve_checkpoint("sam2.1_hiera_huge", None, download=False)


def test_cache_dir_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert weights.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv(weights.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "xdg"))
    assert weights.cache_dir() == tmp_path / "xdg" / "sam2refine"


# --- downloads ----------------------------------------------------------------------------

def test_download_verifies_and_lands_in_cache(server, fake_catalogue, isolated,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = server
    (root / "sam2.1_hiera_tiny.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv(weights.BASE_URL_ENV, base + "/")
    seen: list[tuple[int, int | None]] = []
    path = weights.resolve_checkpoint("sam2.1_hiera_tiny", None, progress=False,
                                      on_progress=lambda done, total: seen.append((done, total)))
    assert path == isolated / "sam2.1_hiera_tiny.pt"
    assert path.read_bytes() == PAYLOAD
    assert weights.sha256_file(path) == fake_catalogue.sha256
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert not list(isolated.glob("*.part"))


def test_download_from_file_mirror(tmp_path: Path, fake_catalogue,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "sam2.1_hiera_tiny.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv(weights.BASE_URL_ENV, mirror.as_uri())
    assert weights.resolve_checkpoint("sam2.1_hiera_tiny", progress=False).read_bytes() == PAYLOAD


def test_checksum_mismatch_leaves_nothing(server, tmp_path: Path) -> None:
    base, root = server
    (root / "w.pt").write_bytes(PAYLOAD)
    dest = tmp_path / "dest"
    with pytest.raises(WeightsError, match=r"expected SHA-256 0{64}, got [0-9a-f]{64}.*removed"):
        weights.download(_entry(sha256="0" * 64), dest, progress=False, url=f"{base}/w.pt")
    assert _leftovers(dest) == []


def test_wrong_size_is_refused_before_downloading(server, tmp_path: Path) -> None:
    base, root = server
    (root / "w.pt").write_bytes(PAYLOAD)
    with pytest.raises(WeightsError, match="not the expected file"):
        weights.download(_entry(size_bytes=123), tmp_path / "d", progress=False,
                         url=f"{base}/w.pt")
    assert _leftovers(tmp_path / "d") == []


def test_unknown_checksum_warns_and_checks_size(server, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    base, root = server
    (root / "w.pt").write_bytes(PAYLOAD)
    with caplog.at_level(logging.WARNING, logger="sam2refine.sam.weights"):
        path = weights.download(_entry(sha256=None), tmp_path, progress=False, url=f"{base}/w.pt")
    assert path.read_bytes() == PAYLOAD
    assert "No published SHA-256" in caplog.text


def test_http_404_names_the_url_and_the_checkpoint_option(server, fake_catalogue, isolated,
                                                          monkeypatch) -> None:
    base, _ = server
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    with pytest.raises(WeightsError) as info:
        weights.resolve_checkpoint("sam2.1_hiera_tiny", None, progress=False)
    message = str(info.value)
    assert f"{base}/sam2.1_hiera_tiny.pt" in message and "404" in message
    assert "--checkpoint PATH" in message and str(isolated / "sam2.1_hiera_tiny.pt") in message
    assert _leftovers(isolated) == []


def test_connection_refused_is_a_clear_error(tmp_path: Path) -> None:
    url = _closed_port_url() + "/w.pt"
    with pytest.raises(WeightsError, match=r"could not be downloaded from .*--checkpoint PATH"):
        weights.download(_entry(), tmp_path, progress=False, url=url)
    assert _leftovers(tmp_path) == []


def test_cancel_mid_download_removes_partial_file(server, tmp_path: Path) -> None:
    base, _ = server
    cancel = threading.Event()
    calls: list[int] = []

    def on_progress(done: int, total: int | None) -> None:
        calls.append(done)
        cancel.set()

    total = SLOW_CHUNK * SLOW_CHUNKS
    data = b"x" * total
    start = time.monotonic()
    with pytest.raises(WeightsError, match="cancelled") as info:
        weights.download(_entry(data), tmp_path / "d", progress=False, cancel=cancel,
                         on_progress=on_progress, url=f"{base}/slow/w.pt")
    assert isinstance(info.value, CancelledError)
    assert calls and calls[-1] < total
    assert time.monotonic() - start < 2
    assert _leftovers(tmp_path / "d") == []


def test_interrupt_removes_partial_file(server, tmp_path: Path) -> None:
    base, _ = server

    def interrupt(done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        weights.download(_entry(b"x" * SLOW_CHUNK * SLOW_CHUNKS), tmp_path / "d",
                         progress=False, on_progress=interrupt, url=f"{base}/slow/w.pt")
    assert _leftovers(tmp_path / "d") == []


# --- cache and explicit checkpoints -------------------------------------------------------

def test_cached_file_is_reused_without_network(fake_catalogue, isolated,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.BASE_URL_ENV, _closed_port_url())
    isolated.mkdir(parents=True)
    (isolated / "sam2.1_hiera_tiny.pt").write_bytes(PAYLOAD)
    first = weights.resolve_checkpoint("sam2.1_hiera_tiny", None, progress=False)
    assert first == isolated / "sam2.1_hiera_tiny.pt"

    def no_hashing(path):
        raise AssertionError("an unchanged verified file must not be hashed again")

    monkeypatch.setattr(weights, "sha256_file", no_hashing)
    assert weights.resolve_checkpoint("sam2.1_hiera_tiny", None, download=False) == first


def test_corrupt_cached_file_is_downloaded_again(server, fake_catalogue, isolated,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = server
    (root / "sam2.1_hiera_tiny.pt").write_bytes(PAYLOAD)
    monkeypatch.setenv(weights.BASE_URL_ENV, base)
    isolated.mkdir(parents=True)
    (isolated / "sam2.1_hiera_tiny.pt").write_bytes(PAYLOAD[:-1] + b"!")
    path = weights.resolve_checkpoint("sam2.1_hiera_tiny", None, progress=False)
    assert path.read_bytes() == PAYLOAD


def test_missing_cache_without_download_is_an_error(fake_catalogue, isolated) -> None:
    with pytest.raises(WeightsError, match="not in the cache.*--checkpoint PATH"):
        weights.resolve_checkpoint("sam2.1_hiera_tiny", None, download=False)


def test_explicit_checkpoint_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(weights.BASE_URL_ENV, _closed_port_url())
    mine = tmp_path / "my weights.pt"
    mine.write_bytes(b"anything")
    assert weights.resolve_checkpoint("sam2.1_hiera_large", mine) == mine
    assert weights.resolve_checkpoint("sam2.1_hiera_large", str(mine)) == mine


def test_missing_explicit_checkpoint_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(WeightsError, match=re.escape(str(missing))):
        weights.resolve_checkpoint("sam2.1_hiera_tiny", missing)
