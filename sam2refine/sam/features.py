"""Per-slice SAM 2 image features, each slice encoded at most once within a memory bound."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class SliceFeatures:
    """What the SAM 2 heads need of one encoded slice (batch of one)."""

    vision_feats: list[torch.Tensor]  # per FPN level, (HW, 1, C)
    vision_pos: list[torch.Tensor]  # per FPN level, (HW, 1, C); identical for every slice
    feat_sizes: list[tuple[int, int]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.vision_feats)

    def to(self, device: torch.device) -> SliceFeatures:
        feats = [t.to(device, non_blocking=True) for t in self.vision_feats]
        return SliceFeatures(feats, self.vision_pos, self.feat_sizes)

    def expand(self, batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Features and positions repeated (as views) for `batch` objects."""
        feats = [t.expand(-1, batch, -1) for t in self.vision_feats]
        pos = [t.expand(-1, batch, -1) for t in self.vision_pos]
        return feats, pos


class FeatureCache:
    """LRU of encoded slices: the newest on the compute device, older ones offloaded to host
    memory, the oldest dropped (and re-encoded if needed again) once both budgets are full.
    """

    def __init__(
        self,
        encode: Callable[[int], SliceFeatures],
        device: torch.device,
        device_budget_bytes: int = 2 << 30,
        host_budget_bytes: int = 8 << 30,
    ) -> None:
        self._encode = encode
        self._device = device
        self._device_budget = device_budget_bytes
        self._host_budget = host_budget_bytes
        self._on_device: OrderedDict[int, SliceFeatures] = OrderedDict()
        self._on_host: OrderedDict[int, SliceFeatures] = OrderedDict()
        self.encodings = 0  # how many slices were run through the image encoder

    def get(self, frame: int) -> SliceFeatures:
        if frame in self._on_device:
            self._on_device.move_to_end(frame)
            return self._on_device[frame]
        if frame in self._on_host:
            feats = self._on_host.pop(frame).to(self._device)
        else:
            feats = self._encode(frame)
            self.encodings += 1
        self._on_device[frame] = feats
        self._enforce_budgets()
        return feats

    def __contains__(self, frame: int) -> bool:
        return frame in self._on_device or frame in self._on_host

    def clear(self) -> None:
        self._on_device.clear()
        self._on_host.clear()

    def _enforce_budgets(self) -> None:
        host = torch.device("cpu")
        while len(self._on_device) > 1 and _total(self._on_device) > self._device_budget:
            frame, feats = self._on_device.popitem(last=False)
            if self._device.type != "cpu":
                feats = feats.to(host)
            self._on_host[frame] = feats
        while self._on_host and _total(self._on_host) > self._host_budget:
            self._on_host.popitem(last=False)


def _total(entries: OrderedDict[int, SliceFeatures]) -> int:
    return sum(f.nbytes() for f in entries.values())
