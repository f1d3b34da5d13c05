"""The per-slice feature cache: each slice encoded once, memory bounds respected."""

from __future__ import annotations

import torch

from sam2refine.sam.features import FeatureCache, SliceFeatures

MB = 1 << 20


def _fake_encoder(calls: list[int]):
    def encode(frame: int) -> SliceFeatures:
        calls.append(frame)
        feats = [torch.full((MB // 4, 1, 1), float(frame))]  # 1 MB of float32 per slice
        return SliceFeatures(feats, [torch.zeros(MB // 4, 1, 1)], [(512, 512)])

    return encode


def test_each_slice_is_encoded_once_while_it_fits():
    calls: list[int] = []
    cache = FeatureCache(_fake_encoder(calls), torch.device("cpu"), 64 * MB, 64 * MB)
    for frame in [0, 1, 2, 1, 0, 2, 2]:
        assert cache.get(frame).vision_feats[0][0, 0, 0] == frame
    assert calls == [0, 1, 2]
    assert cache.encodings == 3


def test_beyond_both_budgets_the_oldest_slices_are_dropped_and_re_encoded():
    calls: list[int] = []
    cache = FeatureCache(_fake_encoder(calls), torch.device("cpu"), 2 * MB, 3 * MB)
    for frame in range(8):
        cache.get(frame)
    assert [f for f in range(8) if f in cache] == [3, 4, 5, 6, 7]  # 2 "on device" + 3 offloaded
    cache.get(7)
    cache.get(0)
    assert calls == [*range(8), 0]


def test_expand_gives_views_for_a_batch_of_objects():
    feats = SliceFeatures([torch.ones(4, 1, 2)], [torch.zeros(4, 1, 2)], [(2, 2)])
    expanded, pos = feats.expand(3)
    assert expanded[0].shape == (4, 3, 2) and pos[0].shape == (4, 3, 2)
    assert expanded[0].data_ptr() == feats.vision_feats[0].data_ptr()
