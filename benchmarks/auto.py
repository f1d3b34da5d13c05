"""Automatic pipeline: Dice and seconds per stage (U-Net alone, SAM 2 stage 1, stage 2).

Trains a small U-Net prompt generator on synthetic phantoms (or takes --prompt-generator),
then runs `auto_segment` on held-out phantoms and on the shared real CT (whose labels are
TotalSegmentator predictions, compared by organ name) and prints Dice per organ and stage.
SAM 2 is the random-init tiny model (seed 0) unless --checkpoint is given: then the SAM
stages are not expected to help, only to run. Ends with one JSON line of the figures.

    .venv/bin/python benchmarks/auto.py        # --prompt-generator CKPT --checkpoint PT
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sam2refine.auto.pipeline import AutoResult, auto_segment  # noqa: E402
from sam2refine.auto.sources import UNetPromptSource  # noqa: E402
from sam2refine.datasets.phantoms import PHANTOM_ORGANS, make_phantom_case, write_phantom_dataset  # noqa: E402
from sam2refine.image.labels import load_label_volume  # noqa: E402
from sam2refine.image.reading import load_volume  # noqa: E402
from sam2refine.io.organ_names import organ_key  # noqa: E402
from sam2refine.sam.model import build_model  # noqa: E402

STAGES = ("unet", "stage1", "stage2")

REAL_CT = ROOT.parent / "shared" / "data" / "totalseg-example"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else float("nan")


def train_unet(args: argparse.Namespace, work: Path) -> Path:
    """A small U-Net prompt generator trained on phantoms (seeded)."""
    from sam2refine.promptgen.train import TrainSettings, train_prompt_generator

    dataset = write_phantom_dataset(work / "phantoms", args.train_cases, seed=0,
                                    shape_kji=tuple(args.shape))
    channels = tuple(int(c) for c in args.channels.split(","))
    settings = TrainSettings(dataset=dataset, out=work / "unet", epochs=args.epochs,
                             steps_per_epoch=args.steps, batch_size=args.batch_size,
                             lr=args.lr, image_size=args.unet_size, channels=channels,
                             strides=(2,) * (len(channels) - 1), num_res_units=args.res_units,
                             val_fraction=0.125, device=args.device, seed=0,
                             show_progress=False)
    start = time.perf_counter()
    result = train_prompt_generator(settings)
    print(f"U-Net trained on {args.train_cases} phantoms in {time.perf_counter() - start:.0f} s")
    return result.best or result.last


def score(result: AutoResult, truth: np.ndarray, values: dict[str, int],
          organs: list[str]) -> dict[str, dict]:
    """Dice per stage for each organ in `organs` present in `truth`; an organ the pipeline did
    not propose scores 0 (a miss, not a gap in the mean)."""
    proposed = {organ_key(name): organ.obj_id for name, organ in result.prompts.items()}
    out: dict[str, dict] = {s.name: {} for s in result.stages}
    for name in organs:
        value = values.get(organ_key(name))
        if value is None or not (truth == value).any():
            continue
        obj_id = proposed.get(organ_key(name))
        for stage in result.stages:
            found = (stage.label_volume.voxels == obj_id) if obj_id is not None else \
                np.zeros(truth.shape, bool)
            out[stage.name][name] = dice(found, truth == value)
    return out


def report(title: str, scores: list[dict], seconds: list[dict]) -> dict[str, float]:
    print(f"\n{title}")
    organs = sorted({o for s in scores for st in STAGES for o in s.get(st, {})})
    print(f"{'organ':16s}" + "".join(f"{s:>10s}" for s in STAGES))
    means = {}
    for organ in organs:
        row = [np.nanmean([s[st][organ] for s in scores if organ in s.get(st, {})])
               for st in STAGES]
        print(f"{organ:16s}" + "".join(f"{v:10.3f}" for v in row))
    for st in STAGES:
        values = [v for s in scores for v in s.get(st, {}).values()]
        means[f"dice_{st}"] = round(float(np.nanmean(values)), 4) if values else None
        means[f"seconds_{st}"] = round(float(np.mean([t[st] for t in seconds])), 2)
    print(f"{'mean':16s}" + "".join(f"{means[f'dice_{st}'] or 0:10.3f}" for st in STAGES))
    print(f"{'seconds':16s}" + "".join(f"{means[f'seconds_{st}']:10.1f}" for st in STAGES))
    return means


def run_case(model, image, source, args, organs=None) -> AutoResult:
    return auto_segment(model, image, source, organs=organs, stages=2, margin=args.margin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # U-Net defaults: the learning test's tiny one (tests/test_promptgen.py)
    parser.add_argument("--train-cases", type=int, default=16)
    parser.add_argument("--test-cases", type=int, default=2)
    parser.add_argument("--shape", type=int, nargs=3, default=(24, 80, 96), metavar=("K", "J", "I"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--steps", type=int, default=40, help="U-Net steps per epoch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--unet-size", type=int, default=64, help="U-Net input size (px)")
    parser.add_argument("--channels", default="8,16,32,64", help="U-Net channels per level")
    parser.add_argument("--res-units", type=int, default=1, help="residual units per level")
    parser.add_argument("--prompt-generator", help="a trained U-Net checkpoint (skip training)")
    parser.add_argument("--checkpoint", help="SAM 2.1 tiny checkpoint (default: random init)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--margin", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-real", action="store_true", help="skip the shared real CT")
    parser.add_argument("--real-organs", default="liver,spleen,kidney_left",
                        help="organs scored on the real CT (comma-separated)")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        ckpt = (Path(args.prompt_generator) if args.prompt_generator
                else train_unet(args, Path(work)))
        torch.manual_seed(0)  # the same random-init SAM 2 whether or not the U-Net was trained
        model = build_model("sam2.1_hiera_tiny", args.image_size, args.checkpoint, args.device)
        source = UNetPromptSource(ckpt, args.device)
        values = {organ_key(n): v for n, v in PHANTOM_ORGANS.items()}
        scores, seconds = [], []
        for n in range(args.test_cases):
            image, labels = make_phantom_case(10_000 + n, tuple(args.shape))  # held out
            result = run_case(model, image, source, args)
            scores.append(score(result, labels.voxels, values, list(PHANTOM_ORGANS)))
            seconds.append({s.name: s.seconds for s in result.stages})
        figures = {"device": args.device, "cpu": platform.machine(),
                   "threads": torch.get_num_threads(), "image_size": args.image_size,
                   "sam2_weights": args.checkpoint or "random-init (seed 0)",
                   "test_cases": args.test_cases, "shape_kji": list(args.shape),
                   **report(f"Held-out phantoms ({args.test_cases}), Dice per stage",
                            scores, seconds)}
        if not args.no_real and (REAL_CT / "example_seg.nii.gz").is_file():
            ct = load_volume(REAL_CT / "example_ct_sm.nii.gz")
            truth = load_label_volume(REAL_CT / "example_seg.nii.gz", ct).voxels
            names = json.loads((REAL_CT / "labels.json").read_text())
            real_values = {organ_key(v): int(k) for k, v in names.items()}
            wanted = args.real_organs.split(",")
            result = run_case(model, ct, source, args, wanted)
            real = report("Shared real CT (TotalSegmentator labels), Dice per stage",
                          [score(result, truth, real_values, wanted)],
                          [{s.name: s.seconds for s in result.stages}])
            figures.update({f"real_ct_{k}": v for k, v in real.items()})
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
