"""Slicer's main thread while SAM 2 works: the module's child engine vs an in-process Session.

Both sides use the same random-init SAM 2.1 tiny (seed 0, saved as an official-layout
checkpoint), the same volume (the shared real CT, a phantom when it is absent) and the same
prompts: a click on the middle axial slice (its first prompt encodes the slice, not timed),
warm-up clicks, then `--clicks` clicks at two alternating positions, then a propagation over
`--slices` slices.

- child engine: the module's Logic on Slicer's real core (`slicer-core`) with its engine in a
  child process, driven the way the widget drives it: a 30 ms timer calls `task.step()`. A
  click is timed from placing the control point to its mask being in the segment.
- in-process: `Session.add_points` / `Session.propagate` called on the main thread, as a module
  that runs the engine in Slicer's process would (the model call is all that is timed).

The sides run one after the other, the in-process one in a fresh process of its own with no
Slicer libraries loaded: alternating them on a 2-core machine let each side's idle OpenMP
threads (which spin for a while after every call) slow the other down, and loading VTK next
to torch was measured to slow torch's kernels too, so this baseline is the in-process best
case.

The main thread's longest stall is its longest uninterrupted call: one `task.step()` on the
child side, the whole model call in-process. The last line printed is one JSON object.

Usage: python benchmarks/responsiveness.py [--clicks 20] [--slices 8] [--image-size 512]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SAM2Refine"), str(ROOT / "tests" / "slicer")]
import torch  # noqa: E402

from sam2refine.image.reading import load_volume  # noqa: E402
from sam2refine.image.volume import Volume  # noqa: E402
from sam2refine.sam.checkpoints import save_checkpoint  # noqa: E402
from sam2refine.sam.model import build_model  # noqa: E402
from sam2refine.sam.session import Session  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "totalseg-example"
WARM_UP_CLICKS = 10  # torch's first calls on new shapes are slow on both sides
TICK_S = 0.03  # the widget's timer


def load_case() -> tuple[Path, str]:
    """The shared real CT, or a synthetic phantom written to a temporary file."""
    path = DATA / "example_ct_sm.nii.gz"
    if path.is_file():
        return path, path.name
    import SimpleITK as sitk

    from tests.conftest import make_phantom

    out = Path(tempfile.mkdtemp()) / "phantom.nii.gz"
    sitk.WriteImage(make_phantom((30, 101, 122)).to_sitk(), str(out))
    return out, "phantom"


def clicks_on(volume: Volume) -> tuple[list[float], list[list[float]]]:
    """The first click (middle of the middle axial slice) and two positions to alternate."""
    ni, nj, nk = volume.shape_ijk
    k = nk // 2
    return [ni * 0.5, nj * 0.5, k], [[ni * 0.45, nj * 0.5, k], [ni * 0.6, nj * 0.4, k]]


def ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000, q)), 1)


def drive(task, stalls: list[float]):
    """Step a task as the widget's timer does; every step's duration goes to `stalls`."""
    while True:
        started = time.perf_counter()
        done = task.step()
        stalls.append(time.perf_counter() - started)
        if done:
            return task.outcome()
        time.sleep(TICK_S)


class ChildSide:
    """The module's Logic with its engine in a child process, stepped like the widget."""

    def __init__(self, path: Path, checkpoint: Path, image_size: int) -> None:
        from conftest import _wire

        import SAM2Refine

        self.core = _wire()
        self.node = self.core.load_volume(path)
        self.logic = SAM2Refine.SAM2RefineLogic(self.core.scene)
        self.logic.configureLocal("sam2.1_hiera_tiny", image_size, str(checkpoint), "cpu",
                                  python=sys.executable)
        self.stalls: list[float] = []
        started = time.perf_counter()
        drive(self.logic.startSessionTask(self.node), self.stalls)
        self.startup = time.perf_counter() - started
        self.organ = self.logic.addSegment("organ")
        self.include = self.logic.pointNodes(self.organ)[0]

    def click(self, ijk) -> float:
        """From placing the control point to its mask in the segment."""
        from SAM2RefineLib.volumes import ijk_to_ras

        started = time.perf_counter()
        self.include.AddControlPoint(*(ijk_to_ras(self.node) @ np.array([*ijk, 1.0]))[:3])
        drive(self.logic.addPointsTask(self.organ), self.stalls)
        return time.perf_counter() - started

    def propagate(self, frames: tuple[int, int]) -> float:
        started = time.perf_counter()
        drive(self.logic.propagateTask(frameRange=frames), self.stalls)
        return time.perf_counter() - started


class InProcessSide:
    """A Session on the main thread, as a module running the engine in Slicer's process."""

    def __init__(self, path: Path, checkpoint: Path, image_size: int) -> None:
        self.session = Session(build_model("sam2.1_hiera_tiny", image_size, checkpoint, "cpu"),
                               load_volume(path))
        self.organ = self.session.add_object("organ")

    def click(self, ijk) -> float:
        started = time.perf_counter()
        self.session.add_points(self.organ, [ijk], [1])
        return time.perf_counter() - started

    def propagate(self, frames: tuple[int, int]) -> float:
        started = time.perf_counter()
        self.session.propagate(frame_range=frames)
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--inprocess-only", metavar="CHECKPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--mask-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    path, case = load_case()
    checkpoint = Path(tempfile.mkdtemp()) / "sam2.1_hiera_tiny.pt"
    if not args.inprocess_only:
        torch.manual_seed(0)
        save_checkpoint(build_model("sam2.1_hiera_tiny", args.image_size, None, "cpu"),
                        checkpoint)

    if args.inprocess_only:  # the baseline, in a process of its own (see the docstring)
        local = InProcessSide(path, Path(args.inprocess_only), args.image_size)
        first, positions = clicks_on(local.session.volume)
        local.click(first)
        for n in range(WARM_UP_CLICKS):
            local.click(positions[n % 2])
        clicks = [local.click(positions[n % 2]) for n in range(args.clicks)]
        frames = (int(first[2]), int(first[2]) + args.slices)
        seconds = local.propagate(frames)
        np.save(args.mask_out, local.session.object_mask(local.organ))
        print(json.dumps({"clicks": clicks, "propagation": seconds}))
        return
    child = ChildSide(path, checkpoint, args.image_size)
    first, positions = clicks_on(child.logic.volume)
    child.click(first)
    for n in range(WARM_UP_CLICKS):
        child.click(positions[n % 2])
    child.stalls.clear()  # the figures: clicks and propagation only
    child_clicks = [child.click(positions[n % 2]) for n in range(args.clicks)]
    frames = (int(first[2]), int(first[2]) + args.slices)
    child_prop = child.propagate(frames)
    stalls, startup = child.stalls, child.startup
    child_mask = child.logic.segmentMask(child.organ)
    child.logic.shutdown()  # its process is gone before the baseline runs
    mask_path = checkpoint.with_name("inprocess_mask.npy")
    baseline = subprocess.run(
        [sys.executable, __file__, "--inprocess-only", str(checkpoint), "--mask-out",
         str(mask_path), "--clicks", str(args.clicks), "--slices", str(args.slices),
         "--image-size", str(args.image_size)], capture_output=True, text=True, check=True)
    measured = json.loads(baseline.stdout.strip().splitlines()[-1])
    local_clicks, local_prop = measured["clicks"], measured["propagation"]
    local_mask = np.load(mask_path)
    local_stall = max([*local_clicks, local_prop])
    figures = {
        "device": "cpu", "cpu": platform.machine(), "threads": torch.get_num_threads(),
        "image_size": args.image_size, "case": case, "clicks": args.clicks,
        "slices": args.slices,
        "child_click_p50_ms": ms(child_clicks, 50), "child_click_p95_ms": ms(child_clicks, 95),
        "inprocess_click_p50_ms": ms(local_clicks, 50),
        "inprocess_click_p95_ms": ms(local_clicks, 95),
        "child_longest_stall_ms": round(max(stalls) * 1000, 1),
        "child_stall_p95_ms": ms(stalls, 95), "child_steps": len(stalls),
        "inprocess_longest_stall_ms": round(local_stall * 1000, 1),
        "stall_ratio": round(local_stall / max(stalls), 1),
        "child_propagation_s": round(child_prop, 2),
        "inprocess_propagation_s": round(local_prop, 2),
        "child_engine_start_s": round(startup, 2),
        "masks_identical": bool(np.array_equal(child_mask, local_mask)),
    }
    print(f"clicks  child p50 {figures['child_click_p50_ms']} ms, p95 "
          f"{figures['child_click_p95_ms']} ms | in-process p50 "
          f"{figures['inprocess_click_p50_ms']} ms, p95 {figures['inprocess_click_p95_ms']} ms")
    print(f"stalls  child longest {figures['child_longest_stall_ms']} ms over "
          f"{len(stalls)} steps | in-process longest {figures['inprocess_longest_stall_ms']} ms")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
