"""A SAM 2 session over one in-memory volume: objects, prompts on any slice, propagation.

Slices along the chosen patient axis are SAM 2's video frames. Each slice is encoded at most
once (see `FeatureCache`); each object keeps its own SAM 2 memory, as in SAM 2.1's video
predictor, so objects never influence each other's masks.

Propagation rule: frames after an object's last prompted slice are tracked forward from it;
every other frame is tracked backward from the next prompted slice above it (the result the
stock predictor's forward-then-reverse passes leave). A prompt on slice m only invalidates
the frames between m's neighbouring prompted slices, so `propagate()` re-runs from m outward
and never touches anything beyond those neighbours.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import replace

import numpy as np
import torch

from sam2refine.errors import CancelledError, PromptError, SAM2RefineError
from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.image.slicing import slice_stack
from sam2refine.image.volume import Volume
from sam2refine.runtime import inference_context
from sam2refine.sam.features import FeatureCache, SliceFeatures
from sam2refine.sam.geometry import PromptGeometry
from sam2refine.sam.objects import SegmentObject, plan_propagation
from sam2refine.sam.prompting import MASK_MODES, FramePrompts, decoder_inputs
from sam2refine.sam.results import ObjectInfo, SliceResult
from sam2refine.sam.transform import model_transform, to_model_tensor

Progress = Callable[[int, int], None]
_EXACT_LOGIT = 10.0 # what SAM 2 itself gives a mask used as output (sigmoid scale 20, bias -10


class Session:
    """Interactive SAM 2 segmentation of one volume; objects are addressed by id or name."""

    def __init__(
        self,
        model: torch.nn.Module,
        volume: Volume,
        axis: str = "axial",
        intensity: str = "ct",
        device_budget_bytes: int = 2 << 30,
        host_budget_bytes: int = 8 << 30,
    ) -> None:
        check_model(model)
        self.model = model
        self.volume = volume
        self.device = next(model.parameters()).device
        self.stack = slice_stack(volume, axis)
        self.transform = model_transform(self.stack, model.image_size)
        self.geometry = PromptGeometry(volume, self.stack)
        self._frames = self.stack.frames(volume.voxels)
        self._window = normalize(volume.voxels, parse_preset(intensity))
        self.features = FeatureCache(
            self._encode, self.device, device_budget_bytes, host_budget_bytes
        )
        self.objects: dict[int, SegmentObject] = {}
        self._maskmem_pos: list[torch.Tensor] | None = None

    @property
    def num_frames(self) -> int:
        return self.stack.num_frames

    # ----- objects -------------------------------------------------------------------------
    def add_object(self, name: str, obj_id: int | None = None) -> int:
        """Create an object; its id is its label value in the output (1, 2, ... by default)."""
        if any(o.name == name for o in self.objects.values()):
            raise PromptError(f"An object named '{name}' already exists; choose another name.")
        obj_id = obj_id if obj_id is not None else max(self.objects, default=0) + 1
        if not 0 < obj_id < 65536 or obj_id in self.objects:
            raise PromptError(f"Object id {obj_id} is taken or outside 1..65535; choose "
                              "another id, or leave it out to get the next free one.")
        self.objects[obj_id] = SegmentObject(obj_id, name)
        return obj_id

    def object(self, obj: int | str) -> SegmentObject:
        """Look up an object by id or name."""
        if isinstance(obj, str):
            for o in self.objects.values():
                if o.name == obj:
                    return o
        elif obj in self.objects:
            return self.objects[obj]
        known = ", ".join(f"{o.obj_id}:{o.name}" for o in self.objects.values()) or "none"
        raise PromptError(f"Unknown object {obj!r}; known objects: {known}. Add it first.")

    def describe(self) -> list[ObjectInfo]:
        """Plain summary of every object (what a remote client or a UI lists)."""
        return [
            ObjectInfo(o.obj_id, o.name, o.locked, sorted(o.prompts), sorted(o.tracked))
            for o in self.objects.values()
        ]

    def remove_object(self, obj: int | str) -> None:
        del self.objects[self.object(obj).obj_id]

    def set_locked(self, obj: int | str, locked: bool = True) -> None:
        """A locked object is never re-propagated and wins every overlap in the label volume."""
        self.object(obj).locked = locked

    # ----- prompts -------------------------------------------------------------------------
    def add_points(
        self,
        obj: int | str,
        points: Iterable[Iterable[float]],
        labels: Iterable[int],
        coords: str = "ijk",
    ) -> list[SliceResult]:
        """Add positive (1) / negative (0) clicks in voxel, mm or slice coordinates; each slice
        they fall on is prompted once, and answers with its mask (in slice order)."""
        o = self._editable(obj)
        groups = self.geometry.points(points, coords)
        try:
            labels = [int(v) for v in labels]
        except (TypeError, ValueError) as exc:
            raise PromptError("Give one label per point: 1 (include) or 0 (exclude).") from exc
        if len(labels) != sum(len(index) for _, _, index in groups) or any(
                v not in (0, 1) for v in labels):
            raise PromptError("Give one label per point: 1 (include) or 0 (exclude).")
        results = []
        for frame, rc, index in groups:
            prompts = self._prompts_for(o, frame)
            prompts.mask = None
            prompts.points += [(float(r), float(c), labels[i]) for (r, c), i in zip(rc, index)]
            results.append(self._run_prompt(o, frame, prompts))
        return results

    def set_box(
        self,
        obj: int | str,
        corner_a: Iterable[float],
        corner_b: Iterable[float],
        coords: str = "ijk",
        frame: int | None = None,
    ) -> SliceResult:
        """Set the box on one slice from two opposite corners (voxel centres, mm, or slice
        positions with coords="slice"). Corners on different slices (e.g. a 3D ROI) need
        `frame` to say which slice to use.
        """
        o = self._editable(obj)
        frame, box = self.geometry.box(corner_a, corner_b, coords, frame)
        prompts = self._prompts_for(o, frame)
        prompts.mask = None
        prompts.box = box
        return self._run_prompt(o, frame, prompts)

    def set_mask(
        self, obj: int | str, frame: int, mask: np.ndarray, mode: str = "refine"
    ) -> SliceResult:
        """Prompt with a 2D mask (H, W) on `frame`, replacing that slice's other prompts.

        mode "refine": SAM 2 refines the mask from the image (box + interior click + mask
        logits into the decoder); "exact": the mask is used as is (SAM 2.1's own behaviour).
        """
        o = self._editable(obj)
        self.geometry.check_frame(frame)
        if mode not in MASK_MODES:
            raise PromptError(f"Unknown mask mode '{mode}'; use one of {MASK_MODES}.")
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (self.stack.height, self.stack.width):
            raise PromptError(
                f"Mask prompt has shape {mask.shape}; slice {frame} is "
                f"{(self.stack.height, self.stack.width)} (rows, columns of the slice stack). "
                "Give a mask of the slice's shape."
            )
        prompts = self._prompts_for(o, frame)
        prompts.points, prompts.box, prompts.mask, prompts.mask_mode = [], None, mask, mode
        return self._run_prompt(o, frame, prompts)

    def set_mask_volume(
        self, obj: int | str, mask: np.ndarray, frames: Iterable[int] | None = None,
        mode: str = "refine",
    ) -> list[SliceResult]:
        """Prompt with a 3D mask on the image grid ([k, j, i], e.g. a segment or a coarse
        label), on the given slices or, by default, on the slice where it is largest."""
        mask = np.asarray(mask).astype(bool)
        if mask.shape != self.volume.voxels.shape:
            raise PromptError(
                f"Mask volume has shape {mask.shape}; the image is {self.volume.voxels.shape} "
                "([k, j, i]). Resample it onto the image grid first."
            )
        stacked = self.stack.frames(mask)
        if frames is None:
            if not stacked.any():
                raise PromptError("The mask volume is empty: there is nothing to prompt with.")
            frames = [int(stacked.reshape(len(stacked), -1).sum(1).argmax())]
        frames = [int(f) for f in frames]
        for f in frames:  # before indexing: slice 999 is a PromptError, not an IndexError
            self.geometry.check_frame(f)
        return [self.set_mask(obj, f, stacked[f], mode) for f in frames]

    def clear_prompts(self, obj: int | str, frame: int) -> None:
        """Forget the prompts of `obj` on `frame`; the next propagate() fills the slice again."""
        o = self._editable(obj)
        if o.prompts.pop(frame, None) is None:
            return
        self._invalidate_around(o, frame)
        o.cond.pop(frame, None)
        o.stale.add(frame)
        if not o.cond:
            o.tracked.clear()
            o.stale.clear()

    # ----- propagation ---------------------------------------------------------------------
    def propagate(
        self,
        objects: Iterable[int | str] | None = None,
        frame_range: tuple[int, int] | None = None,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> int:
        """Track every prompted object through the slices that need it; returns slices run.

        `frame_range` (inclusive) limits the work to those slices. Cancelling stops between
        slices (raising `CancelledError`); finished slices are kept and the rest stay pending.
        """
        picked = self.objects.values() if objects is None else [self.object(o) for o in objects]
        chosen = list({o.obj_id: o for o in picked if o.cond and not o.locked}.values())
        lo, hi = self.geometry.frame_range(frame_range)
        plan = plan_propagation(chosen, lo, hi)
        total, done = sum(len(objs) for _, _, objs in plan), 0
        with inference_context(self.device):
            for frame, reverse, objs in plan:
                for o in objs:
                    if cancel is not None and cancel.is_set():
                        raise CancelledError(
                            f"Propagation cancelled after {done} of {total} slices."
                        )
                    self._track(o, frame, reverse)
                    done += 1
                    if progress is not None:
                        progress(done, total)
        return done

    # ----- results -------------------------------------------------------------------------
    def slice_mask(self, obj: int | str, frame: int) -> np.ndarray:
        """An object's own mask on one slice (H, W); empty where it has no result."""
        o = self.object(obj)
        self.geometry.check_frame(frame)  # slice 999 is an error, not an empty mask
        out = o.output(frame)
        if out is None:
            return np.zeros((self.stack.height, self.stack.width), bool)
        return (self._frame_logits([out])[0] > 0).cpu().numpy()

    def object_mask(self, obj: int | str) -> np.ndarray:
        """An object's own mask on the whole volume, [k, j, i] bool (overlaps not resolved)."""
        o = self.object(obj)
        frames = np.zeros((self.num_frames, self.stack.height, self.stack.width), bool)
        for f in sorted(set(o.cond) | set(o.tracked)):
            frames[f] = self.slice_mask(o.obj_id, f)
        return self.stack.to_volume(frames)

    def label_volume(self) -> Volume:
        """One label per voxel on the image grid: where objects overlap the higher logit
        wins, and locked objects win over unlocked ones."""
        ids = np.array(sorted(self.objects), dtype=np.int64)
        dtype = np.uint8 if ids.size == 0 or ids.max() < 256 else np.uint16
        labels = np.zeros((self.num_frames, self.stack.height, self.stack.width), dtype)
        for f in range(self.num_frames):
            present = [(i, self.objects[i].output(f)) for i in ids]
            present = [(i, out) for i, out in present if out is not None]
            if present:
                labels[f] = self._resolve_overlaps(present).astype(dtype)
        return self.volume.with_voxels(self.stack.to_volume(labels))

    # ----- internals -----------------------------------------------------------------------
    def _editable(self, obj: int | str) -> SegmentObject:
        o = self.object(obj)
        if o.locked:
            raise PromptError(f"Object '{o.name}' is locked; unlock it before changing it.")
        return o

    def _prompts_for(self, o: SegmentObject, frame: int) -> FramePrompts:
        """A copy of the slice's prompts to edit; `_run_prompt` keeps it only on success."""
        current = o.prompts.get(frame)
        if current is None:
            return FramePrompts(initial=o.output(frame) is None)
        return replace(current, points=list(current.points))

    def _invalidate_around(self, o: SegmentObject, frame: int) -> None:
        """Mark the frames between `frame`'s neighbouring prompted slices for re-tracking."""
        lower = max((c for c in o.cond if c < frame), default=-1)
        upper = min((c for c in o.cond if c > frame), default=self.num_frames)
        o.stale.update(f for f in range(lower + 1, upper) if f != frame)

    def _run_prompt(self, o: SegmentObject, frame: int, prompts: FramePrompts) -> SliceResult:
        previous = o.output(frame)
        prev_logits = None if previous is None else previous["pred_masks"]
        if prompts.initial and frame not in o.cond:
            prev_logits = None
        reverse = o.reverse.get(frame, False)
        with inference_context(self.device):
            inputs = decoder_inputs(prompts, self.transform, prev_logits, self.device)
            out = self._step(o, frame, prompts.initial, inputs.point_inputs, inputs.mask_inputs,
                             reverse, inputs.prev_logits, memory_exclude=frame)
        if prompts.mask is not None and prompts.mask_mode == "exact":
            out["exact_mask"] = torch.from_numpy(prompts.mask.copy())
        o.prompts[frame] = prompts
        o.cond[frame] = out
        o.tracked.pop(frame, None)
        o.stale.discard(frame)
        self._invalidate_around(o, frame)
        mask = self.slice_mask(o.obj_id, frame)
        return SliceResult(o.obj_id, frame, mask, float(out["object_score_logits"].item()))

    def _track(self, o: SegmentObject, frame: int, reverse: bool) -> None:
        o.tracked[frame] = self._step(o, frame, False, None, None, reverse, None)
        o.reverse[frame] = reverse
        o.stale.discard(frame)

    def _step(self, o, frame, initial, point_inputs, mask_inputs, reverse, prev_logits,
              memory_exclude=None) -> dict:
        feats = self.features.get(frame)
        vision_feats, vision_pos = feats.expand(1)
        out = self.model.track_step(
            frame_idx=frame,
            is_init_cond_frame=initial,
            current_vision_feats=vision_feats,
            current_vision_pos_embeds=vision_pos,
            feat_sizes=feats.feat_sizes,
            point_inputs=point_inputs,
            mask_inputs=mask_inputs,
            output_dict=o.memory(exclude=memory_exclude),
            num_frames=self.num_frames,
            track_in_reverse=reverse,
            run_mem_encoder=True,
            prev_sam_mask_logits=prev_logits,
        )
        return self._compact(out)

    def _compact(self, out: dict) -> dict:
        """Keep what later frames need; memory features in bf16 as the stock predictor does."""
        if self._maskmem_pos is None:
            self._maskmem_pos = [p[0:1].clone() for p in out["maskmem_pos_enc"]]
        return {
            "maskmem_features": out["maskmem_features"].to(torch.bfloat16),
            "maskmem_pos_enc": self._maskmem_pos,
            "pred_masks": out["pred_masks"].float(),
            "obj_ptr": out["obj_ptr"].float(),
            "object_score_logits": out["object_score_logits"].float(),
        }

    def _encode(self, frame: int) -> SliceFeatures:
        unit = frames_to_unit(self._frames[frame : frame + 1], *self._window)
        image = to_model_tensor(unit, self.transform).to(self.device)
        with inference_context(self.device):
            backbone_out = self.model.forward_image(image)
            _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
        return SliceFeatures([f.float() for f in feats], [p.float() for p in pos], sizes)

    def _frame_logits(self, outs: list[dict]) -> torch.Tensor:
        """Logits of several outputs -> (B, H, W) on the slice grid. An exact mask prompt
        is returned at the slice's own resolution, not through SAM 2's low-res copy."""
        low = torch.cat([out["pred_masks"] for out in outs]).float()
        size = self.model.image_size
        full = torch.nn.functional.interpolate(low, (size, size), mode="bilinear",
                                               align_corners=False)
        logits = self.transform.logits_to_frame(full)[:, 0]
        for index, out in enumerate(outs):
            exact = out.get("exact_mask")
            if exact is not None:
                logits[index] = torch.where(exact, _EXACT_LOGIT, -_EXACT_LOGIT)
        return logits

    def _resolve_overlaps(self, present: list[tuple[int, dict]]) -> np.ndarray:
        logits = self._frame_logits([out for _, out in present])
        locked = torch.tensor([self.objects[i].locked for i, _ in present])
        inside = logits > 0
        # Locked objects outrank any unlocked logit; among equals the higher logit wins.
        rank = torch.where(inside, logits + locked[:, None, None] * 1e6, -torch.inf)
        winner = rank.argmax(0)
        ids = torch.tensor([i for i, _ in present])
        return torch.where(inside.any(0), ids[winner], 0).cpu().numpy()


def check_model(model: torch.nn.Module) -> None:
    """A session needs a SAM 2 model (from `sam2refine.sam.model.build_model`)."""
    if not hasattr(model, "track_step"):
        raise SAM2RefineError("The session needs a SAM 2 model built by build_model().")
