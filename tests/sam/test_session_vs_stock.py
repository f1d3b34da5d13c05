"""The session runs SAM 2's own algorithm: for the same weights, volume and prompts its
masks, memories and object pointers equal the stock SAM2VideoPredictor's bit for bit."""

from __future__ import annotations

import numpy as np
import sam2.sam2_video_predictor as stock_module
import torch

from sam2refine.image.intensity import frames_to_unit, normalize, parse_preset
from sam2refine.sam.model import build_model
from sam2refine.sam.session import Session
from sam2refine.sam.transform import to_model_tensor
from tests.conftest import TEST_IMAGE_SIZE, make_phantom

BOXES = [(10, 8, 30, 26), (5, 20, 20, 44)]  # (r0, c0, r1, c1) on the prompted slice


def test_session_equals_stock_video_predictor(tiny_checkpoint, monkeypatch):
    model = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, predictor=True)
    volume = make_phantom((5, 40, 48))
    frame = 2
    session = Session(model, volume)
    for index, (r0, c0, r1, c1) in enumerate(BOXES):
        obj = session.add_object(f"object {index}")
        corners = session.stack.frc_to_ijk(np.array([[frame, r0, c0], [frame, r1, c1]]))
        session.set_box(obj, corners[0], corners[1])
    session.propagate()

    window = normalize(volume.voxels, parse_preset("ct"))
    images = to_model_tensor(frames_to_unit(session.stack.frames(volume.voxels), *window),
                             session.transform)
    size = model.image_size
    monkeypatch.setattr(stock_module, "load_video_frames", lambda **_: (images, size, size))
    state = model.init_state("in-memory")
    for index, box in enumerate(BOXES):
        box_in_model = session.transform.box_to_model(*box)
        model.add_new_points_or_box(state, frame, index + 1, box=box_in_model)
    for _ in model.propagate_in_video(state, start_frame_idx=frame):
        pass
    for _ in model.propagate_in_video(state, start_frame_idx=frame, reverse=True):
        pass

    for index, obj in enumerate(session.objects.values()):
        stock = state["output_dict_per_obj"][index]
        for f in range(session.num_frames):
            theirs = stock["cond_frame_outputs"].get(f) or stock["non_cond_frame_outputs"][f]
            ours = obj.output(f)
            for key in ("pred_masks", "maskmem_features", "obj_ptr", "object_score_logits"):
                assert torch.equal(ours[key], theirs[key]), (obj.name, f, key)
