"""Click-to-mask latency: the engine server (real HTTP on loopback) vs the in-process session.

Same random-init SAM 2.1 tiny (seed 0), same volume (the shared real CT, a phantom when it is
absent), same prompts on both sides: a box on the middle slice (its first prompt encodes the
slice, not timed), warm-up clicks, then `--clicks` clicks on that cached slice at alternating
positions, timed one by one from call to returned mask (over HTTP that includes the JSON
request, the worker hand-off, packing the mask and unpacking it in the client). In-process and
server clicks alternate, so drifts of a shared machine hit both alike.

server_overhead = (server p50 - in-process p50) / in-process p50  (target: < 0.20 on CPU at
512 px). The last line printed is one JSON object with all figures.

Usage: python benchmarks/latency.py [--clicks 50] [--image-size 512] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from sam2refine.remote.client import Client
from sam2refine.remote.server import ServerThread, create_app
from sam2refine.runtime import resolve_device
from sam2refine.sam.model import build_model
from sam2refine.sam.session import Session

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg-example"
WARM_UP_CLICKS = 3


def load_case() -> tuple[Volume, str]:
    """The shared real CT, or a synthetic phantom when the shared data is absent."""
    path = DATA / "example_ct_sm.nii.gz"
    if path.is_file():
        return load_volume(path), path.name
    from tests.conftest import make_phantom

    return make_phantom((30, 101, 122)), "phantom"


def prompts(volume: Volume) -> tuple[tuple, tuple, list[list[float]]]:
    """A box around the middle of the middle axial slice and two click positions inside it."""
    ni, nj, nk = volume.shape_ijk
    k = nk // 2
    a = (round(ni * 0.25), round(nj * 0.25), k)
    b = (round(ni * 0.75), round(nj * 0.75), k)
    clicks = [[ni * 0.45, nj * 0.5, k], [ni * 0.6, nj * 0.4, k]]
    return a, b, clicks


def percentile_ms(times: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(times) * 1000, q)), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=50)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", args.image_size, None, device)
    volume, case = load_case()
    corner_a, corner_b, clicks = prompts(volume)

    local = Session(model, volume)
    with ServerThread(create_app(model)) as url, Client(url) as client:
        remote = client.open_session(volume)
        sessions = {"inprocess": local, "server": remote}
        for session in sessions.values():
            obj = session.add_object("target")
            session.set_box(obj, corner_a, corner_b)  # encodes the slice: not timed
            for n in range(WARM_UP_CLICKS):
                session.add_points(obj, [clicks[n % 2]], [1])
        times: dict[str, list[float]] = {name: [] for name in sessions}
        same = True
        for n in range(args.clicks):
            masks = []
            for name, session in sessions.items():
                start = time.perf_counter()
                [result] = session.add_points(1, [clicks[n % 2]], [n % 3 != 2])
                times[name].append(time.perf_counter() - start)
                masks.append(result.mask)
            same &= bool(np.array_equal(*masks))
        health = []
        for _ in range(args.clicks):
            start = time.perf_counter()
            client.health()
            health.append(time.perf_counter() - start)
        remote.close()

    figures: dict[str, object] = {
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "image_size": args.image_size, "case": case,
        "clicks": args.clicks,
    }
    for name in sessions:
        figures[f"{name}_p50_ms"] = percentile_ms(times[name], 50)
        figures[f"{name}_p95_ms"] = percentile_ms(times[name], 95)
    p50_local, p50_server = figures["inprocess_p50_ms"], figures["server_p50_ms"]
    figures["overhead_p50_ms"] = round(p50_server - p50_local, 2)
    figures["server_overhead"] = round((p50_server - p50_local) / p50_local, 4)
    figures["http_roundtrip_p50_ms"] = percentile_ms(health, 50)
    figures["masks_identical"] = same

    print(f"{args.clicks} clicks on a cached {args.image_size} px slice of {case} on {device} "
          f"({figures['threads']} threads):")
    for name in sessions:
        print(f"  {name:10s} p50 {figures[f'{name}_p50_ms']:8.2f} ms   "
              f"p95 {figures[f'{name}_p95_ms']:8.2f} ms")
    print(f"  server overhead at p50: {figures['overhead_p50_ms']:.2f} ms = "
          f"{100 * figures['server_overhead']:.1f} % of in-process (target < 20 %); "
          f"bare HTTP round trip {figures['http_roundtrip_p50_ms']:.2f} ms; "
          f"masks identical: {same}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
