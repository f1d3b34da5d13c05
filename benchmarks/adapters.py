"""Adapter size per SAM 2.1 model and the inference time they add (image encoder + session).

    .venv/bin/python benchmarks/adapters.py --image-size 512 --repeats 5

Counts use the default `AdapterConfig`; times compare the same random-init tiny weights with
and without (perturbed, i.e. "trained") adapters, interleaved so that machine load hits both.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sam2refine.image.volume import Volume  # noqa: E402
from sam2refine.sam.adapter_files import save_adapters  # noqa: E402
from sam2refine.sam.adapters import add_adapters, count_parameters, named_adapters  # noqa: E402
from sam2refine.sam.model import build_model  # noqa: E402
from sam2refine.sam.session import Session  # noqa: E402


def sizes(names: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for name in names:
        model = add_adapters(build_model(name, 1024, None, "cpu"))
        adapters, total = count_parameters(model)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_adapters(model, Path(tmp) / "a.safetensors", base_model_name=name,
                                 base_checkpoint_sha256=None, image_size=1024)
            file_mb = path.stat().st_size / 1e6
        out[name] = {"adapter_params": adapters, "base_params": total - adapters,
                     "percent": 100 * adapters / (total - adapters), "file_mb": file_mb}
        print(f"{name:24s} {adapters:>9,d} adapter parameters = "
              f"{out[name]['percent']:.3f} % of {total - adapters:,}; file {file_mb:.2f} MB")
        del model
    return out


def _volume(slices: int) -> Volume:
    import numpy as np

    rng = np.random.default_rng(0)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in (slices, 96, 96)),
                          indexing="ij")
    organ = ((i - 40) / 20) ** 2 + ((j - 48) / 25) ** 2 + ((k - slices / 2) / slices) ** 2 <= 1
    voxels = (np.where(organ, 150.0, 40.0) + rng.normal(0, 10, organ.shape)).astype(np.int16)
    return Volume(voxels, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), np.eye(3))


def _session_time(model, volume: Volume) -> float:
    start = time.perf_counter()
    session = Session(model, volume, intensity="ct")
    obj = session.add_object("organ")
    session.add_points(obj, [[40, 48, volume.voxels.shape[0] // 2]], [1])
    session.propagate([obj])
    return (time.perf_counter() - start) / session.num_frames


def timings(image_size: int, repeats: int, slices: int) -> dict[str, float]:
    torch.manual_seed(0)
    base = build_model("sam2.1_hiera_tiny", image_size, None, "cpu")
    adapted = add_adapters(copy.deepcopy(base))
    with torch.no_grad():
        for _, module in named_adapters(adapted):
            for p in module.up.parameters():
                p.normal_(0, 0.05)
    image = torch.rand(1, 3, image_size, image_size)
    volume = _volume(slices)
    enc = {"base": [], "adapted": []}
    ses = {"base": [], "adapted": []}
    with torch.inference_mode():
        base.forward_image(image), adapted.forward_image(image)  # warm-up
        for _ in range(repeats):
            for label, model in (("base", base), ("adapted", adapted)):
                start = time.perf_counter()
                model.forward_image(image)
                enc[label].append(time.perf_counter() - start)
    for _ in range(max(1, repeats // 2)):
        for label, model in (("base", base), ("adapted", adapted)):
            ses[label].append(_session_time(model, volume))
    result = {f"encoder_s_{k}": statistics.median(v) for k, v in enc.items()}
    result |= {f"session_s_per_slice_{k}": statistics.median(v) for k, v in ses.items()}
    result["encoder_overhead_percent"] = 100 * (result["encoder_s_adapted"]
                                                / result["encoder_s_base"] - 1)
    result["session_overhead_percent"] = 100 * (result["session_s_per_slice_adapted"]
                                                / result["session_s_per_slice_base"] - 1)
    for key, value in result.items():
        print(f"{key:34s} {value:.3f}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=6)
    parser.add_argument("--models", nargs="*", default=["sam2.1_hiera_tiny",
                        "sam2.1_hiera_small", "sam2.1_hiera_base_plus", "sam2.1_hiera_large"])
    args = parser.parse_args()
    result = {"sizes": sizes(args.models),
              "timing": timings(args.image_size, args.repeats, args.slices),
              "image_size": args.image_size, "torch_threads": torch.get_num_threads()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
