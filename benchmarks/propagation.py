"""Propagation speed: stock SAM2VideoPredictor (fed in memory) vs our Session, same weights,
same volume, same prompts, one process.

Workflow measured for each (the interactive loop the session is built for):
  1. a box per object on one slice, propagate through the whole volume in both directions;
  2. one corrective click on object 1 on another slice, propagate again.
Stock is given its best settings for this: `add_all_frames_to_correct_as_cond=True` (so the
correction is kept) and, after the correction, a forward pass from the first prompted slice
and a reverse pass from the last one (what it needs to cover both directions of every
prompt). Seconds per slice = phase time / number of slices.

Masks are compared after step 1, where both run the same algorithm (Dice per object against
stock); after step 2 the session deliberately leaves slices beyond the neighbouring prompts
untouched while stock re-tracks them, so that Dice is informative only.

Usage: python benchmarks/propagation.py [--slices 10] [--image-size 512] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import sam2.sam2_video_predictor as stock_module
import torch

from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.image.labels import load_label_volume
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from sam2refine.runtime import inference_context, resolve_device
from sam2refine.sam.model import build_model
from sam2refine.sam.session import Session
from sam2refine.sam.transform import to_model_tensor

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "totalseg-example"


def load_case(num_slices: int) -> tuple[Volume, Volume | None]:
    """The shared real CT (cropped to `num_slices` around its middle) with its labels, or a
    synthetic phantom when the shared data is absent."""
    if (DATA / "example_ct_sm.nii.gz").is_file():
        ct = load_volume(DATA / "example_ct_sm.nii.gz")
        labels = load_label_volume(DATA / "example_seg.nii.gz", ct)
        k0 = max(0, ct.voxels.shape[0] // 2 - num_slices // 2)
        sl = slice(k0, k0 + num_slices)
        origin = ct.index_to_lps([0, 0, k0])
        crop = Volume(ct.voxels[sl].copy(), ct.spacing, tuple(origin), ct.direction)
        return crop, crop.with_voxels(labels.voxels[sl].copy())
    from tests.conftest import make_phantom

    return make_phantom((num_slices, 96, 112)), None


def boxes_for(session: Session, labels: Volume | None, count: int, frame: int) -> list:
    """Per object a box (r0, c0, r1, c1) on `frame`: the largest label structures there, or
    a grid of boxes on a phantom."""
    if labels is not None:
        lab = session.stack.frames(labels.voxels)[frame]
        values, sizes = np.unique(lab[lab > 0], return_counts=True)
        chosen = values[np.argsort(-sizes)][:count]
        boxes = []
        for v in chosen:
            rows, cols = np.nonzero(lab == v)
            if rows.max() > rows.min() and cols.max() > cols.min():
                boxes.append((rows.min(), cols.min(), rows.max(), cols.max()))
        if len(boxes) >= count:
            return boxes[:count]
    h, w = session.stack.height, session.stack.width
    return [(h // 8 + i % 4 * h // 6, w // 8 + i // 4 * w // 6,
             h // 8 + i % 4 * h // 6 + h // 5, w // 8 + i // 4 * w // 6 + w // 5)
            for i in range(count)]


def run_session(model, volume, boxes, frame, fix) -> tuple[float, float, dict]:
    session = Session(model, volume)
    ids = [session.add_object(f"object {i + 1}") for i in range(len(boxes))]
    t0 = time.perf_counter()
    for obj, (r0, c0, r1, c1) in zip(ids, boxes):
        corners = session.stack.frc_to_ijk(np.array([[frame, r0, c0], [frame, r1, c1]]))
        session.set_box(obj, corners[0], corners[1])
    session.propagate()
    t1 = time.perf_counter()
    first = {o: session.object_mask(o) for o in ids}
    session.add_points(ids[0], [fix], [1], coords="slice")
    session.propagate()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, first


def run_stock(model, volume, boxes, frame, fix, stack, transform) -> tuple[float, float, dict]:
    window = normalize(volume.voxels, parse_preset("ct"))
    unit = frames_to_unit(stack.frames(volume.voxels), *window)
    images = to_model_tensor(unit, transform)
    size = model.image_size
    original = stock_module.load_video_frames
    stock_module.load_video_frames = lambda **_: (images, size, size)
    try:
        with inference_context(model.device):
            t0 = time.perf_counter()
            state = model.init_state("in-memory")
            for obj, box in enumerate(boxes, start=1):
                model.add_new_points_or_box(state, frame, obj, box=transform.box_to_model(*box),
                                            normalize_coords=True)
            logits = _stock_propagate(model, state, frame, frame)
            t1 = time.perf_counter()
            first = {o: _to_volume(stack, transform, model, logits, i)
                     for i, o in enumerate(range(1, len(boxes) + 1))}
            point = transform.points_to_model(np.array([[fix[1], fix[2]]]))
            model.add_new_points_or_box(state, fix[0], 1, points=point, labels=[1],
                                        normalize_coords=True)
            _stock_propagate(model, state, frame, max(frame, fix[0]))
            t2 = time.perf_counter()
    finally:
        stock_module.load_video_frames = original
    return t1 - t0, t2 - t1, first


def _stock_propagate(model, state, first: int, last: int) -> dict[int, torch.Tensor]:
    logits = {}
    for f, _, masks in model.propagate_in_video(state, start_frame_idx=first):
        logits[f] = masks
    for f, _, masks in model.propagate_in_video(state, start_frame_idx=last, reverse=True):
        logits[f] = masks
    return logits


def _to_volume(stack, transform, model, logits, index) -> np.ndarray:
    frames = np.zeros((stack.num_frames, stack.height, stack.width), bool)
    for f, masks in logits.items():
        frames[f] = (transform.logits_to_frame(masks[index : index + 1].float())[0, 0] > 0).numpy()
    return stack.to_volume(frames)


def warm_up(model, volume: Volume, box, frame: int) -> None:
    """One prompt and two tracked slices, so one-off start-up costs (allocations, kernel
    selection) are paid before either side is timed."""
    session = Session(model, volume)
    obj = session.add_object("warm-up")
    corners = session.stack.frc_to_ijk(np.array([[frame, box[0], box[1]], [frame, box[2], box[3]]]))
    session.set_box(obj, corners[0], corners[1])
    session.propagate(frame_range=(max(0, frame - 1), min(session.num_frames - 1, frame + 1)))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--slices", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 13])
    args = parser.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", args.image_size, None, device, predictor=True)
    model.add_all_frames_to_correct_as_cond = True
    volume, labels = load_case(args.slices)
    probe = Session(model, volume)
    frame = probe.num_frames // 2
    fix = (min(probe.num_frames - 2, frame + 3), probe.stack.height // 2, probe.stack.width // 2)
    figures: dict[str, float | str] = {
        "device": str(device), "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "image_size": args.image_size,
        "slices": probe.num_frames,
    }
    warm_up(model, volume, boxes_for(probe, labels, 1, frame)[0], frame)
    for count in args.objects:
        boxes = boxes_for(probe, labels, count, frame)
        s_init, s_fix, s_masks = run_stock(model, volume, boxes, frame, fix, probe.stack,
                                             probe.transform)
        o_init, o_fix, o_masks = run_session(model, volume, boxes, frame, fix)
        n = probe.num_frames
        dices = [dice(s_masks[o], o_masks[o]) for o in s_masks]
        tag = f"{count}_object" + ("s" if count > 1 else "")
        print(f"\n{count} object(s), {n} slices at {args.image_size} px on {device}:")
        print(f"  initial pass  stock {s_init / n:6.2f} s/slice   session {o_init / n:6.2f} "
              f"s/slice   ratio {s_init / o_init:5.2f}")
        print(f"  correction    stock {s_fix / n:6.2f} s/slice   session {o_fix / n:6.2f} "
              f"s/slice   ratio {s_fix / o_fix:5.2f}")
        total_ratio = (s_init + s_fix) / (o_init + o_fix)
        print(f"  whole loop    stock {(s_init + s_fix) / n:6.2f} s/slice   session "
              f"{(o_init + o_fix) / n:6.2f} s/slice   ratio {total_ratio:5.2f}")
        print(f"  Dice vs stock after the initial pass: min {min(dices):.4f}")
        figures.update({
            f"stock_s_per_slice_{tag}": round((s_init + s_fix) / n, 3),
            f"session_s_per_slice_{tag}": round((o_init + o_fix) / n, 3),
            f"ratio_initial_pass_{tag}": round(s_init / o_init, 3),
            f"ratio_{tag}": round(total_ratio, 3),
            f"dice_min_vs_stock_{tag}": round(min(dices), 4),
        })
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
