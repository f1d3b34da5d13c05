"""Undo stack of AI steps: snapshots of the segments a step changes, taken before it runs.

A prompt step changes one slice of one segment, so only that slice is kept; a propagation
changes whole segments, which are kept bit-packed (1 bit per voxel). The stack is bounded in
steps and in bytes; the oldest steps are forgotten first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SegmentSnapshot:
    """The content of one segment (one slice of it, or all of it) before a step."""

    segment_id: str
    frame: int | None  # slice index along the session's axis; None: the whole segment
    shape: tuple[int, ...]
    bits: np.ndarray  # np.packbits of the saved mask

    @classmethod
    def take(cls, segment_id: str, mask_kji: np.ndarray, stack, frame: int | None = None
             ) -> SegmentSnapshot:
        """Save `mask_kji` ([k, j, i] bool), or only its slice `frame` of `stack`."""
        saved = np.asarray(mask_kji, bool) if frame is None else stack.frames(mask_kji)[frame]
        return cls(segment_id, frame, saved.shape, np.packbits(saved, axis=None))

    def saved(self) -> np.ndarray:
        """The saved mask (the slice, or the whole [k, j, i] segment)."""
        count = int(np.prod(self.shape))
        return np.unpackbits(self.bits, count=count).astype(bool).reshape(self.shape)

    def restore(self, current_kji: np.ndarray, stack) -> np.ndarray:
        """`current_kji` with the saved content put back (a new array)."""
        if self.frame is None:
            return self.saved()
        restored = np.array(current_kji, dtype=bool, copy=True)
        stack.frames(restored)[self.frame] = self.saved()
        return restored

    @property
    def nbytes(self) -> int:
        return int(self.bits.nbytes)


@dataclass
class UndoEntry:
    """One AI step: what it changed and how to take its prompt back from the session."""

    label: str
    snapshots: list[SegmentSnapshot] = field(default_factory=list)
    prompt_keys: list[tuple[str, int]] = field(default_factory=list)  # (segment, slice) prompted
    sent_points: list[tuple[str, str]] = field(default_factory=list)  # (node ID, point ID)
    created_node_ids: list[str] = field(default_factory=list)  # e.g. generated box ROIs
    created_segment_ids: list[str] = field(default_factory=list)  # removed again by undo
    # segment -> its propagation range before the step (a 3D box sets one), None: no range
    previous_ranges: dict[str, tuple[int, int] | None] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.snapshots)

    @property
    def segment_ids(self) -> list[str]:
        return sorted({s.segment_id for s in self.snapshots})


class UndoStack:
    """Last-in first-out AI steps, bounded by `max_steps` and `max_bytes`."""

    def __init__(self, max_steps: int = 30, max_bytes: int = 512 << 20) -> None:
        self.max_steps = max_steps
        self.max_bytes = max_bytes
        self._entries: list[UndoEntry] = []

    def push(self, entry: UndoEntry) -> None:
        self._entries.append(entry)
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_steps
            or sum(e.nbytes for e in self._entries) > self.max_bytes
        ):
            self._entries.pop(0)

    def pop(self) -> UndoEntry | None:
        return self._entries.pop() if self._entries else None

    def peek(self) -> UndoEntry | None:
        return self._entries[-1] if self._entries else None

    def clear(self) -> None:
        self._entries.clear()

    def labels(self) -> list[str]:
        """Step names, oldest first."""
        return [e.label for e in self._entries]

    def __len__(self) -> int:
        return len(self._entries)
