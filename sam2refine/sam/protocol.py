"""`SessionLike`: the verbs every session offers, in-process (`Session`) or remote
(`RemoteSession`), so callers (the CLI, the auto stages, the Slicer Logic, the web app) are
written once for both. Torch-free, like the client."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

import numpy as np

from sam2refine.image.slicing import SliceStack
from sam2refine.image.volume import Volume
from sam2refine.sam.results import ObjectInfo, SliceResult

Progress = Callable[[int, int], None]


@runtime_checkable
class SessionLike(Protocol):
    """Interactive segmentation of one volume; objects are addressed by id or name."""

    volume: Volume
    stack: SliceStack

    @property
    def num_frames(self) -> int: ...

    def add_object(self, name: str, obj_id: int | None = None) -> int: ...

    def describe(self) -> list[ObjectInfo]: ...

    def remove_object(self, obj: int | str) -> None: ...

    def set_locked(self, obj: int | str, locked: bool = True) -> None: ...

    def add_points(self, obj: int | str, points: Iterable[Iterable[float]],
                   labels: Iterable[int], coords: str = "ijk") -> list[SliceResult]: ...

    def set_box(self, obj: int | str, corner_a: Iterable[float], corner_b: Iterable[float],
                coords: str = "ijk", frame: int | None = None) -> SliceResult: ...

    def set_mask(self, obj: int | str, frame: int, mask: np.ndarray,
                 mode: str = "refine") -> SliceResult: ...

    def set_mask_volume(self, obj: int | str, mask: np.ndarray,
                        frames: Iterable[int] | None = None,
                        mode: str = "refine") -> list[SliceResult]: ...

    def clear_prompts(self, obj: int | str, frame: int) -> None: ...

    def propagate(self, objects: Iterable[int | str] | None = None,
                  frame_range: tuple[int, int] | None = None,
                  progress: Progress | None = None,
                  cancel: threading.Event | None = None) -> int: ...

    def slice_mask(self, obj: int | str, frame: int) -> np.ndarray: ...

    def object_mask(self, obj: int | str) -> np.ndarray: ...

    def label_volume(self) -> Volume: ...
