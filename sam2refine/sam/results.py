"""Plain results of a session, shared by the in-process session and the remote client."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SliceResult:
    """The mask of one object on one slice, returned at once by every prompt."""

    obj_id: int
    frame: int
    mask: np.ndarray  # (H, W) bool, in the slice stack's display orientation
    object_score: float  # SAM 2's object-presence logit (> 0: object present)


@dataclass
class ObjectInfo:
    """What a session knows about one object, without its SAM 2 state."""

    obj_id: int
    name: str
    locked: bool
    prompted_frames: list[int]
    tracked_frames: list[int]
