"""Official SAM 2.1 weights: the catalogue, the per-user cache and a verified downloader.

Weights are never shipped in the package; they are downloaded once into a per-user cache and
checked against the size and SHA-256 recorded in `data/weights.json` before use.

Environment variables:

- ``SAM2REFINE_CACHE``: folder holding the downloaded weights. Default:
  ``$XDG_CACHE_HOME/sam2refine`` or ``~/.cache/sam2refine`` (``%LOCALAPPDATA%\\sam2refine``
  on Windows).
- ``SAM2REFINE_WEIGHTS_BASE_URL``: download from a mirror instead of Meta's server (an
  intranet server, ``file:///shared/weights``, a test server). The file name is appended to
  it, e.g. ``https://mirror.example.org/sam2`` gives
  ``https://mirror.example.org/sam2/sam2.1_hiera_tiny.pt``. Checksums are still verified.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import BinaryIO

from sam2refine.errors import CancelledError, WeightsError

log = logging.getLogger(__name__)

CACHE_ENV = "SAM2REFINE_CACHE"
BASE_URL_ENV = "SAM2REFINE_WEIGHTS_BASE_URL"
_CHUNK = 1 << 20
_TIMEOUT_S = 30.0
_MARKER_SUFFIX = ".verified.json"

ProgressCallback = Callable[[int, int | None], None]


class DownloadCancelledError(WeightsError, CancelledError):
    """A weights download was cancelled; nothing was left in the cache."""


@dataclass(frozen=True)
class WeightsEntry:
    """One official checkpoint: where it comes from, its `sam2` config, how to verify it."""

    name: str
    url: str
    config: str
    size_bytes: int | None
    sha256: str | None
    description: str
    source: str = ""

    @property
    def filename(self) -> str:
        """Name of the file in the cache (the official file name)."""
        return f"{self.name}.pt"


def load_catalogue() -> dict[str, WeightsEntry]:
    """Read the packaged catalogue of official SAM 2.1 checkpoints, keyed by model name."""
    text = resources.files("sam2refine").joinpath("data/weights.json").read_text("utf-8")
    catalogue = {}
    for name, raw in json.loads(text).items():
        sha = raw.get("sha256")
        if sha is not None and (len(sha) != 64 or set(sha) - set("0123456789abcdef")):
            raise WeightsError(f"Bad sha256 for {name} in the packaged weights catalogue.")
        catalogue[name] = WeightsEntry(
            name=name, url=raw["url"], config=raw["config"], size_bytes=raw.get("size_bytes"),
            sha256=sha, description=raw.get("description", ""), source=raw.get("source", ""),
        )
    return catalogue


def get_entry(model: str) -> WeightsEntry:
    """The catalogue entry for `model`, or a WeightsError that lists the known names."""
    catalogue = load_catalogue()
    if model not in catalogue:
        raise WeightsError(
            f"Unknown model '{model}'. Use one of the known models with --model: "
            f"{', '.join(sorted(catalogue))}."
        )
    return catalogue[model]


def cache_dir() -> Path:
    """Per-user folder for downloaded weights (outside the package, survives reinstalls)."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sam2refine"


@dataclass(frozen=True)
class CachedWeights:
    """One catalogue entry, where its file lives in the cache and whether it is there."""

    entry: WeightsEntry
    path: Path
    cached: bool


def weights_catalogue() -> list[CachedWeights]:
    """Every official checkpoint with its cache status (what a model chooser lists)."""
    rows = []
    for _, entry in sorted(load_catalogue().items()):
        path = cached_path(entry)
        rows.append(CachedWeights(entry, path, path.is_file()))
    return rows


def download_weights(name: str, on_progress: ProgressCallback | None = None,
                     cancel: threading.Event | None = None) -> Path:
    """Download and verify the official `name` weights into the cache; returns their path."""
    return download(get_entry(name), cache_dir(), progress=on_progress is None, cancel=cancel,
                    on_progress=on_progress)


def cached_path(entry: WeightsEntry) -> Path:
    """Where `entry`'s weights live in the cache (whether or not they are there yet)."""
    return cache_dir() / entry.filename


def weights_url(entry: WeightsEntry) -> str:
    """Download URL for `entry`, honouring the SAM2REFINE_WEIGHTS_BASE_URL mirror override."""
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks so large checkpoints need little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_checkpoint(
    model: str, checkpoint: str | Path | None = None, download: bool = True,
    progress: bool = True, cancel: threading.Event | None = None,
    on_progress: ProgressCallback | None = None,
) -> Path:
    """Path of the weights to load for `model`.

    An explicit `checkpoint` wins; otherwise the cached official file is used if it verifies,
    else it is downloaded (when `download` is true).
    """
    entry = get_entry(model)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"Checkpoint file not found: {path}. Check the --checkpoint path, or leave it "
                f"out to use the official {model} weights."
            )
        return path
    target = cached_path(entry)
    if target.is_file() and _cached_file_ok(entry, target):
        return target
    if not download:
        raise WeightsError(
            f"The {model} weights are not in the cache ({target}). Run "
            f"`sam2refine weights download {model}`, or download {entry.url} yourself and "
            "pass it with --checkpoint PATH or copy it to that path."
        )
    return _download(entry, target.parent, progress=progress, cancel=cancel,
                     on_progress=on_progress)


def download(
    entry: WeightsEntry, dest_dir: str | Path, progress: bool = True,
    cancel: threading.Event | None = None, on_progress: ProgressCallback | None = None,
    url: str | None = None,
) -> Path:
    """Download `entry` into `dest_dir`, verify size and SHA-256, and return the final path.

    Data goes to `<file>.part` first and is renamed only once verified, so an interrupted,
    cancelled or corrupt download never leaves a file that looks like usable weights.
    """
    url = url or weights_url(entry)
    dest_dir = Path(dest_dir).expanduser()
    final = dest_dir / entry.filename
    part = final.with_name(final.name + ".part")
    if cancel is not None and cancel.is_set():
        raise DownloadCancelledError(f"Download of the {entry.name} weights was cancelled.")
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WeightsError(
            f"Cannot create the weights folder {dest_dir} ({exc}). Set {CACHE_ENV} to a "
            "writable folder, or pass a downloaded checkpoint with --checkpoint PATH."
        ) from exc
    if entry.sha256 is None:
        log.warning("No published SHA-256 for %s: the download is checked by size only.",
                    entry.name)
    log.info("Downloading %s weights from %s to %s", entry.name, url, final)
    try:
        digest, size = _stream(entry, url, final, part, progress, cancel, on_progress)
        _check_download(entry, url, final, digest, size)
        os.replace(part, final)
        _write_marker(final, digest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return final


_download = download  # resolve_checkpoint's `download` flag shadows the function's name


def _unreachable(entry: WeightsEntry, url: str, final: Path, exc: Exception) -> WeightsError:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(exc, urllib.error.HTTPError):
        reason = f"HTTP {exc.code} {exc.reason}"
    return WeightsError(
        f"The {entry.name} weights could not be downloaded from {url} ({reason}). If this "
        f"computer has no internet access, download the file elsewhere and pass it with "
        f"--checkpoint PATH, or put it at {final}."
    )


def _stream(entry: WeightsEntry, url: str, final: Path, part: Path, progress: bool,
            cancel: threading.Event | None, on_progress: ProgressCallback | None,
            ) -> tuple[str, int]:
    """Copy the response into `part`, hashing as it goes; returns (sha256 hex, byte count)."""
    request = urllib.request.Request(url, headers={"User-Agent": "sam2refine"})
    try:
        response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise _unreachable(entry, url, final, exc) from exc
    digest, done = hashlib.sha256(), 0
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else entry.size_bytes
        if entry.size_bytes is not None and total != entry.size_bytes:
            raise WeightsError(
                f"{url} offers {total} bytes but the official {entry.name} file has "
                f"{entry.size_bytes}: not the expected file (wrong mirror?). Nothing was saved."
            )
        from tqdm import tqdm  # here, so the catalogue lists without it (Slicer's Python)

        read = getattr(response, "read1", response.read)  # read1: return as data arrives
        with _open_part(part) as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.filename,
            disable=not progress or sys.stderr is None,
        ) as bar:
            while not (total is not None and done > total):  # the size check reports excess
                if cancel is not None and cancel.is_set():
                    raise DownloadCancelledError(
                        f"Download of the {entry.name} weights was cancelled; the partial "
                        "file was removed."
                    )
                try:
                    chunk = read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise _unreachable(entry, url, final, exc) from exc
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise _unwritable(part, exc) from exc
                digest.update(chunk)
                done += len(chunk)
                bar.update(len(chunk))
                if on_progress is not None:
                    on_progress(done, total)
    return digest.hexdigest(), done


def _open_part(part: Path) -> BinaryIO:
    """Open the partial file; a failure names the folder problem instead of a bare OSError."""
    try:
        return open(part, "wb")  # noqa: SIM115 (closed by the caller's with-statement)
    except OSError as exc:
        raise _unwritable(part, exc) from exc


def _unwritable(part: Path, exc: OSError) -> WeightsError:
    return WeightsError(
        f"Cannot write {part} ({exc}). Free some disk space, or set {CACHE_ENV} to a writable "
        "folder, or pass a downloaded checkpoint with --checkpoint PATH."
    )


def _check_download(entry: WeightsEntry, url: str, final: Path, digest: str, size: int) -> None:
    """Raise a WeightsError if the downloaded bytes are not the official file."""
    if entry.size_bytes is not None and size != entry.size_bytes:
        raise WeightsError(
            f"Download of {entry.name} from {url} is incomplete or wrong: got {size} bytes, "
            f"expected {entry.size_bytes}. The partial file was removed; try again, or download "
            f"the file elsewhere and pass it with --checkpoint PATH or put it at {final}."
        )
    if entry.sha256 is not None and digest != entry.sha256:
        raise WeightsError(
            f"Checksum mismatch for {entry.name} downloaded from {url}: expected SHA-256 "
            f"{entry.sha256}, got {digest}. The file was removed. Try again; if it keeps "
            "failing the server or a proxy is altering the file."
        )


def _cached_file_ok(entry: WeightsEntry, path: Path) -> bool:
    """Verify a cached file (reusing an earlier verification if the file is unchanged).

    A file that fails verification is removed, so that it is downloaded again.
    """
    if entry.sha256 is None:
        log.warning("No published SHA-256 for %s: using the cached %s without verifying it.",
                    entry.name, path)
        return entry.size_bytes is None or path.stat().st_size == entry.size_bytes
    if _marker_matches(path, entry.sha256):
        return True
    size = path.stat().st_size
    if entry.size_bytes not in (None, size):
        problem = f"{size} bytes instead of {entry.size_bytes}"
    else:
        got = sha256_file(path)
        if got == entry.sha256:
            _write_marker(path, got)
            return True
        problem = f"SHA-256 {got} instead of {entry.sha256}"
    log.warning("Cached %s is not the official file (%s); removing it.", path, problem)
    path.unlink(missing_ok=True)
    _marker(path).unlink(missing_ok=True)
    return False


def _marker(path: Path) -> Path:
    return path.with_name(path.name + _MARKER_SUFFIX)


def _record(path: Path, digest: str) -> dict[str, object]:
    stat = path.stat()
    return {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write_marker(path: Path, digest: str) -> None:
    """Record that `path` (at its current size and mtime) was verified, to skip re-hashing."""
    try:
        _marker(path).write_text(json.dumps(_record(path, digest)), encoding="utf-8")
    except OSError as exc:  # only an optimisation: the file is simply hashed again next time
        log.debug("Cannot write verification marker for %s: %s", path, exc)


def _marker_matches(path: Path, digest: str) -> bool:
    try:
        return json.loads(_marker(path).read_text(encoding="utf-8")) == _record(path, digest)
    except (OSError, ValueError):
        return False
