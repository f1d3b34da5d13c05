"""One training clip through SAM 2: prompted first frame, correction rounds, memory tracking.

Frame 0 is prompted (jittered box or interior click, see `prompt_simulation`) and corrected in
a few rounds, each fed the previous round's low-resolution logits as the decoder's mask input;
later frames are segmented from SAM 2's memory alone, as during propagation. The model's
building blocks (`_prepare_memory_conditioned_features`, `_forward_sam_heads`,
`_encode_new_memory`) are called directly rather than `track_step`, because SAM 2.1 sends any
mask input to `_use_mask_as_output`, which copies the mask to the output without running the
decoder: training (and the "refine" path below) must run the decoder on the mask instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from sam2refine.finetune.loss import LossTerms, segmentation_loss
from sam2refine.finetune.prompt_simulation import (
    PromptPlan,
    PromptSet,
    binary_to_logits,
    correction_points,
    interior_point,
    jittered_box,
)

_LOGIT_CLAMP = 32.0  # as the session does with previous logits (no-object frames hold -1024)


@dataclass
class FrameFeatures:
    """Image-encoder features of the clip's frames, in SAM 2's flattened (HW, T, C) layout."""

    feats: list[torch.Tensor]
    pos: list[torch.Tensor]
    sizes: list[tuple[int, int]]

    def frame(self, t: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return [f[:, t : t + 1] for f in self.feats], [p[:, t : t + 1] for p in self.pos]


@dataclass
class ClipResult:
    """Averaged loss over every decoder call of the clip, and the final mask of each frame."""

    loss: LossTerms
    masks: torch.Tensor  # (T, S, S) bool, model pixels
    decoder_calls: int


def encode_frames(model: torch.nn.Module, images: torch.Tensor) -> FrameFeatures:
    """Run the image encoder on (T, 3, S, S) frames; without gradients if it has none to train."""
    trains_encoder = any(p.requires_grad for p in model.image_encoder.parameters())
    with torch.set_grad_enabled(torch.is_grad_enabled() and trains_encoder):
        backbone_out = model.forward_image(images)
        _, feats, pos, sizes = model._prepare_backbone_features(backbone_out)
    return FrameFeatures(feats, pos, sizes)


def enable_grad_checkpointing(model: torch.nn.Module) -> int:
    """Recompute each image-encoder block in the backward pass instead of storing its
    activations (less memory, about a third more compute). Returns the blocks wrapped."""
    blocks = model.image_encoder.trunk.blocks
    for block in blocks:
        if getattr(block, "_sam2refine_checkpointed", False):
            continue
        plain = block.forward
        block.forward = functools.partial(_checkpointed, plain)
        block._sam2refine_checkpointed = True
    return len(blocks)


def _checkpointed(forward, *args):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False)
    return forward(*args)


def run_clip(
    model: torch.nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor,
    plan: PromptPlan,
    generator: torch.Generator,
) -> ClipResult:
    """Prompt frame 0 by `plan`, correct it, track the rest; loss on every decoder output.

    `images` (T, 3, S, S) model input, `masks` (T, S, S) bool ground truth (frame 0 must
    contain the object).
    """
    frames = encode_frames(model, images)
    num_frames = images.shape[0]
    memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    target0 = masks[0]
    prompts = PromptSet()
    if plan.initial == "box":
        prompts.box = jittered_box(target0, generator)
    else:
        prompts.add_points(interior_point(target0, generator), torch.ones(1, dtype=torch.int32))
    losses: list[LossTerms] = []
    out = _decode(model, frames, 0, True, memory, num_frames, prompts, None)
    losses.append(_loss(out, target0))
    point_inputs_used = True
    for round_ in plan.rounds:
        previous = out.low_res.detach().clamp(-_LOGIT_CLAMP, _LOGIT_CLAMP)
        if round_.mask_only:
            mask_in = binary_to_logits(previous > 0) if round_.binarize else previous
            out = _decode(model, frames, 0, True, memory, num_frames, PromptSet(), mask_in)
            point_inputs_used = False
        else:
            pred = out.high_res[0, 0].detach() > 0
            coords, labels = correction_points(pred, target0, round_.num_points, generator)
            prompts.add_points(coords, labels)
            out = _decode(model, frames, 0, True, memory, num_frames, prompts, previous)
            point_inputs_used = True
        losses.append(_loss(out, target0))
    memory["cond_frame_outputs"][0] = _memory_entry(model, frames, 0, out, point_inputs_used)
    finals = [out.high_res[0, 0].detach() > 0]
    for t in range(1, num_frames):
        out = _decode(model, frames, t, False, memory, num_frames, PromptSet(), None)
        losses.append(_loss(out, masks[t]))
        memory["non_cond_frame_outputs"][t] = _memory_entry(model, frames, t, out, False)
        finals.append(out.high_res[0, 0].detach() > 0)
    return ClipResult(_mean_terms(losses), torch.stack(finals), len(losses))


def refine_from_mask(
    model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """The "refine" mask-prompt path: the decoder runs on the mask alone (as +-10 logits,
    no clicks, no box) and returns (S, S) logits that follow the image.

    SAM 2.1's own path for a mask input (`_use_mask_as_output`) returns the mask unchanged;
    fine-tuning with mask-only rounds is what teaches the decoder to improve it instead.
    """
    frames = encode_frames(model, image[None] if image.ndim == 3 else image)
    memory: dict[str, dict[int, dict]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    mask_in = binary_to_logits(mask)[None, None]
    out = _decode(model, frames, 0, True, memory, 1, PromptSet(), mask_in)
    return out.high_res[0, 0]


def copy_through_mask(
    model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """What SAM 2.1 itself outputs for a mask prompt (`_use_mask_as_output`): (S, S) logits."""
    frames = encode_frames(model, image[None] if image.ndim == 3 else image)
    feats, _ = frames.frame(0)
    pix = _pixel_features(model, feats[-1], frames.sizes[-1])
    high_res = _high_res_features(feats, frames.sizes)
    outputs = model._use_mask_as_output(pix, high_res, mask.float()[None, None])
    return outputs[4][0, 0]


@dataclass
class _DecoderOutput:
    multi_logits: torch.Tensor  # (1, M, S, S)
    ious: torch.Tensor  # (1, M)
    low_res: torch.Tensor  # (1, 1, S/4, S/4), the candidate SAM picks
    high_res: torch.Tensor  # (1, 1, S, S)
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


def _decode(model, frames: FrameFeatures, t: int, initial: bool, memory: dict, num_frames: int,
            prompts: PromptSet, mask_inputs: torch.Tensor | None) -> _DecoderOutput:
    feats, pos = frames.frame(t)
    pix = model._prepare_memory_conditioned_features(
        frame_idx=t,
        is_init_cond_frame=initial,
        current_vision_feats=feats[-1:],
        current_vision_pos_embeds=pos[-1:],
        feat_sizes=frames.sizes[-1:],
        output_dict=memory,
        num_frames=num_frames,
        track_in_reverse=False,
    )
    point_inputs = prompts.point_inputs(pix.device)
    multimask = model._use_multimask(initial, point_inputs)
    outputs = model._forward_sam_heads(
        backbone_features=pix,
        point_inputs=point_inputs,
        mask_inputs=mask_inputs,
        high_res_features=_high_res_features(feats, frames.sizes),
        multimask_output=multimask,
    )
    _, multi_high, ious, low_res, high_res, obj_ptr, score = outputs
    return _DecoderOutput(multi_high, ious, low_res, high_res, obj_ptr, score)


def _memory_entry(model, frames: FrameFeatures, t: int, out: _DecoderOutput,
                  from_points: bool) -> dict:
    feats, _ = frames.frame(t)
    mem, mem_pos = model._encode_new_memory(
        current_vision_feats=feats,
        feat_sizes=frames.sizes,
        pred_masks_high_res=out.high_res,
        object_score_logits=out.object_score,
        is_mask_from_pts=from_points,
    )
    return {"maskmem_features": mem, "maskmem_pos_enc": mem_pos, "obj_ptr": out.obj_ptr,
            "pred_masks": out.low_res}


def _high_res_features(feats: list[torch.Tensor], sizes: list[tuple[int, int]]):
    if len(feats) <= 1:
        return None
    return [x.permute(1, 2, 0).reshape(x.size(1), x.size(2), *s)
            for x, s in zip(feats[:-1], sizes[:-1])]


def _pixel_features(model, feat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return feat.permute(1, 2, 0).reshape(-1, model.hidden_dim, *size)


def _loss(out: _DecoderOutput, target: torch.Tensor) -> LossTerms:
    return segmentation_loss(out.multi_logits, out.ious, target[None, None], out.object_score)


def _mean_terms(terms: list[LossTerms]) -> LossTerms:
    n = float(len(terms))
    return LossTerms(
        total=sum(t.total for t in terms) / n,
        focal=sum(t.focal for t in terms) / n,
        dice=sum(t.dice for t in terms) / n,
        iou=sum(t.iou for t in terms) / n,
        score=sum(t.score for t in terms) / n,
    )
