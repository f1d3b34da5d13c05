"""One object's SAM 2 state on a session, and the order propagation visits its slices in."""

from __future__ import annotations

from dataclasses import dataclass, field

from sam2refine.sam.prompting import FramePrompts


@dataclass
class SegmentObject:
    """One object (segment) and its SAM 2 state."""

    obj_id: int  # label value in the output label volume
    name: str
    locked: bool = False
    prompts: dict[int, FramePrompts] = field(default_factory=dict)
    cond: dict[int, dict] = field(default_factory=dict)  # SAM 2 outputs on prompted frames
    tracked: dict[int, dict] = field(default_factory=dict)  # outputs on propagated frames
    reverse: dict[int, bool] = field(default_factory=dict)  # direction each frame was tracked
    stale: set[int] = field(default_factory=set)  # frames propagate() must (re)compute

    def output(self, frame: int) -> dict | None:
        return self.cond.get(frame) or self.tracked.get(frame)

    def memory(self, exclude: int | None = None) -> dict[str, dict[int, dict]]:
        cond = {f: o for f, o in self.cond.items() if f != exclude}
        return {"cond_frame_outputs": cond, "non_cond_frame_outputs": self.tracked}


def plan_propagation(objs: list[SegmentObject], lo: int, hi: int) -> list[tuple[int, bool, list]]:
    """(frame, reverse, objects) in execution order: forward frames ascending, then backward
    frames descending, so every frame's memory neighbours are computed before it."""
    forward: dict[int, list[SegmentObject]] = {}
    backward: dict[int, list[SegmentObject]] = {}
    for o in objs:
        last = max(o.cond)
        for f in o.stale:
            if lo <= f <= hi and f not in o.cond:
                (forward if f > last else backward).setdefault(f, []).append(o)
    return [(f, False, forward[f]) for f in sorted(forward)] + [
        (f, True, backward[f]) for f in sorted(backward, reverse=True)
    ]
