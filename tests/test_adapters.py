"""Adapters on SAM 2.1: zero-init equivalence, size, every site in the path, files, merging."""

from __future__ import annotations

import copy

import pytest
import torch

from sam2refine.adapters import (
    AdapterConfig,
    adapter_parameters,
    add_adapters,
    count_parameters,
    freeze_base,
    named_adapters,
    parameter_summary,
)
from sam2refine.errors import AdapterError

pytestmark = pytest.mark.slow


@pytest.fixture
def adapted(tiny_model):
    """A copy of the shared tiny model with default adapters (the fixture stays untouched)."""
    return add_adapters(copy.deepcopy(tiny_model))


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def _features(model, image) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.forward_image(image)
    return list(out["backbone_fpn"]) + [out["vision_features"]]


def test_default_adapters_are_under_one_percent_of_tiny(adapted):
    adapters, total = count_parameters(adapted)
    print(parameter_summary(adapted))
    assert 0 < adapters < 0.01 * (total - adapters)


def test_zero_init_adapters_keep_the_image_encoder_output(tiny_model, adapted):
    image = _image()
    for base, ours in zip(_features(tiny_model, image), _features(adapted, image)):
        assert torch.allclose(base, ours, atol=1e-6)


def test_adding_the_same_adapters_twice_changes_nothing(adapted):
    before = count_parameters(adapted)
    add_adapters(adapted, AdapterConfig())
    assert count_parameters(adapted) == before
    with pytest.raises(AdapterError, match="already has adapters"):
        add_adapters(adapted, AdapterConfig(encoder_bottleneck=8))


def test_freeze_base_leaves_only_adapters_trainable(adapted):
    trainable = freeze_base(adapted)
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(adapted)}
    assert all(p.requires_grad == (id(p) in {id(q) for q in trainable})
               for p in adapted.parameters())
    with_decoder = freeze_base(adapted, train_decoder=True)
    decoder = list(adapted.sam_mask_decoder.parameters())
    assert len(with_decoder) > len(trainable) and all(p.requires_grad for p in decoder)
    assert len(named_adapters(adapted)) == 12 + 4 + 4 + 7
