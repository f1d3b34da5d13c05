"""Adapters on SAM 2.1: zero-init equivalence, size, every site in the path, files, merging."""

from __future__ import annotations

import copy
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from sam2refine.cli.main import main
from sam2refine.errors import AdapterError
from sam2refine.sam.adapter_files import (
    load_adapters,
    merge_adapters,
    merged_adapters,
    read_adapter_file,
    save_adapters,
)
from sam2refine.sam.adapters import (
    AdapterConfig,
    ConvAdapter,
    adapter_config,
    adapter_parameters,
    adapter_state_dict,
    add_adapters,
    count_parameters,
    freeze_base,
    named_adapters,
    parameter_summary,
    remove_adapters,
)
from sam2refine.sam.model import build_model
from sam2refine.sam.session import Session
from sam2refine.sam.weights import sha256_file
from tests.conftest import TEST_IMAGE_SIZE, make_phantom

pytestmark = pytest.mark.slow

TINY = "sam2.1_hiera_tiny"
SITES = {"encoder": "image_encoder.trunk", "neck": "image_encoder.neck",
         "memory": "memory_attention", "decoder": "sam_mask_decoder"}


def _perturb(model, site_prefix: str = "", seed: int = 0):
    """Give the adapters under `site_prefix` random non-zero up-projections (as if trained)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in named_adapters(model):
            if name.startswith(site_prefix):
                for p in module.up.parameters():
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


@pytest.fixture(scope="module")
def work(tiny_model):
    """One private copy of the shared tiny model (copies cost a second each on CPU)."""
    return copy.deepcopy(tiny_model)


def _restore(model, reference) -> None:
    """Back to `reference`: adapters off, trainability, grads and the mask decoder's weights
    (the only base weights tests change; a whole reload would cost a second)."""
    remove_adapters(model)
    model.sam_mask_decoder.load_state_dict(reference.sam_mask_decoder.state_dict())
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None


@pytest.fixture
def base_copy(work, tiny_model):
    """The private copy, restored to the base model after the test."""
    yield work
    _restore(work, tiny_model)


@pytest.fixture
def adapted(base_copy):
    """The private copy with default, untrained adapters."""
    return add_adapters(base_copy)


@pytest.fixture(scope="module")
def trained(tiny_model):
    """Tiny with all adapters perturbed, standing in for a fine-tuned model."""
    return _perturb(add_adapters(copy.deepcopy(tiny_model)))


@pytest.fixture(scope="module")
def base_sha(tiny_checkpoint) -> str:
    return sha256_file(tiny_checkpoint)


@pytest.fixture(scope="module")
def adapter_file(trained, base_sha, tmp_path_factory):
    path = tmp_path_factory.mktemp("adapters") / "organ.safetensors"
    return save_adapters(trained, path, base_model_name=TINY, base_checkpoint_sha256=base_sha,
                         image_size=TEST_IMAGE_SIZE)


def _image(seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(seed))


def _features(model, image=None) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.forward_image(_image() if image is None else image)
    return list(out["backbone_fpn"])


def _session_logits(model) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits on a clicked slice (no memory used) and on the next, tracked, slice."""
    session = Session(model, make_phantom(), intensity="ct")
    obj = session.add_object("organ")
    frame = session.add_points(obj, [[19, 20, 6]], [1])[0].frame
    session.propagate([obj], frame_range=(frame, frame + 1))
    state = session.object(obj)
    return state.cond[frame]["pred_masks"], state.tracked[frame + 1]["pred_masks"]


@pytest.fixture(scope="module")
def base_logits(tiny_model):
    return _session_logits(tiny_model)


@pytest.fixture(scope="module")
def base_features(tiny_model):
    return _features(tiny_model)


@pytest.fixture(scope="module")
def trained_features(trained):
    return _features(trained)


@pytest.fixture(scope="module")
def trained_site_outputs(trained):
    return _site_outputs(trained)


def _same(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> bool:
    return all(torch.allclose(x, y, atol=atol) for x, y in zip(a, b, strict=True))


def test_default_adapters_are_under_one_percent_of_tiny(adapted):
    adapters, total = count_parameters(adapted)
    print(parameter_summary(adapted))
    assert 0 < adapters < 0.01 * (total - adapters)
    assert len(named_adapters(adapted)) == 12 + 4 + 4 + 7  # blocks, FPN levels, layers, decoder


def test_default_adapters_are_under_one_percent_of_tiny_at_1024_px():
    model = add_adapters(build_model(TINY, 1024, None, "cpu"))
    adapters, total = count_parameters(model)
    print(parameter_summary(model))
    assert 0 < adapters < 0.01 * (total - adapters)


def test_zero_init_adapters_keep_every_output_of_the_base_model(base_features, adapted,
                                                                base_logits):
    assert _same(base_features, _features(adapted))
    assert _same(_session_logits(adapted), base_logits)


@pytest.mark.parametrize("site", ["encoder", "neck"])
def test_trained_image_adapters_change_the_image_features(base_features, adapted, site):
    _perturb(adapted, SITES[site])
    assert not _same(base_features, _features(adapted), atol=1e-3)


def test_trained_memory_adapters_change_only_the_tracked_slices(adapted, base_logits):
    _perturb(adapted, SITES["memory"])
    cond, tracked = _session_logits(adapted)
    assert torch.allclose(cond, base_logits[0], atol=1e-6)  # no memory on a clicked slice
    assert not torch.allclose(tracked, base_logits[1], atol=1e-3)


def test_trained_decoder_adapters_change_the_clicked_slice(adapted, base_logits):
    _perturb(adapted, SITES["decoder"])
    cond, _ = _session_logits(adapted)
    assert not torch.allclose(cond, base_logits[0], atol=1e-3)


def test_conv_adapter_sees_the_same_grid_in_every_token_layout():
    torch.manual_seed(0)
    grid = ConvAdapter(8, 4, "bhwc")
    torch.nn.init.normal_(grid.up.weight)
    tokens_first, batch_first = ConvAdapter(8, 4, "nbc", (3, 5)), ConvAdapter(8, 4, "bnc", (3, 5))
    tokens_first.load_state_dict(grid.state_dict())
    batch_first.load_state_dict(grid.state_dict())
    x = torch.randn(2, 3, 5, 8)  # B, H, W, C
    expected = grid(x).flatten(1, 2)
    assert torch.allclose(batch_first(x.flatten(1, 2)), expected, atol=1e-6)
    assert torch.allclose(tokens_first(x.flatten(1, 2).transpose(0, 1)).transpose(0, 1),
                          expected, atol=1e-6)


def test_adding_the_same_adapters_twice_changes_nothing(adapted):
    before = count_parameters(adapted)
    add_adapters(adapted, AdapterConfig())
    assert count_parameters(adapted) == before
    with pytest.raises(AdapterError, match="already has adapters"):
        add_adapters(adapted, AdapterConfig(encoder_bottleneck=8))


def test_removing_adapters_gives_back_the_base_model(adapted, tiny_model, base_features):
    _perturb(adapted)
    remove_adapters(adapted)
    assert adapter_config(adapted) is None and not named_adapters(adapted)
    assert list(adapted.state_dict()) == list(tiny_model.state_dict())
    assert all(map(torch.equal, _features(adapted), base_features))


def test_bottleneck_widths_are_configurable_per_site(base_copy):
    config = AdapterConfig(encoder_bottleneck=8, neck_bottleneck=0, memory_bottleneck=4,
                           decoder_bottleneck=0)
    model = add_adapters(base_copy, config)
    names = [name for name, _ in named_adapters(model)]
    assert len(names) == 12 + 4 and not any(n.startswith(("image_encoder.neck", "sam_mask"))
                                            for n in names)
    assert model.memory_attention.layers[0].adapter.down.out_features == 4
    with pytest.raises(AdapterError, match="whole number"):
        AdapterConfig(encoder_bottleneck=-1)


def test_freeze_base_trains_only_adapters_and_gradients_reach_them(adapted):
    trainable = freeze_base(adapted)
    ids = {id(p) for p in trainable}
    assert ids == {id(p) for p in adapter_parameters(adapted)}
    assert all(p.requires_grad == (id(p) in ids) for p in adapted.parameters())
    sum(out.square().mean() for out in _site_outputs(adapted, grad=True)).backward()
    used = [adapted.image_encoder.trunk.blocks[0].attn.adapter,
            adapted.image_encoder.neck.convs[3].conv.adapter,
            adapted.memory_attention.layers[0].adapter,
            *(m for n, m in named_adapters(adapted) if n.startswith("sam_mask_decoder"))]
    assert all(m.up.weight.grad is not None and m.up.weight.grad.abs().sum() > 0 for m in used)
    assert all(p.grad is None for p in adapted.parameters() if id(p) not in ids)
    with_decoder = freeze_base(adapted, train_decoder=True)
    assert len(with_decoder) > len(trainable)
    assert all(p.requires_grad for p in adapted.sam_mask_decoder.parameters())


def _site_outputs(model, grad: bool = False) -> list[torch.Tensor]:
    """Outputs of one host of each adapter kind, on random inputs of the right shapes."""
    gen = torch.Generator().manual_seed(1)
    rand = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    tokens, side = rand(1, 256, 256), model.sam_image_embedding_size
    with torch.set_grad_enabled(grad):
        return [
            model.image_encoder.trunk.blocks[0](rand(1, 64, 64, 96)),  # windowed Hiera block
            model.image_encoder.neck.convs[3](rand(1, 96, 64, 64)),
            model.memory_attention.layers[0](tgt=tokens, memory=rand(1, 256, 64),
                                             pos=rand(1, 256, 64), query_pos=tokens),
            *model.sam_mask_decoder.transformer(rand(1, 256, side, side),
                                                rand(1, 256, side, side), rand(1, 5, 256)),
        ]


def test_adapters_follow_their_host_dtype(base_copy):
    base_copy.sam_mask_decoder.to(torch.bfloat16)
    try:
        add_adapters(base_copy)
        dtypes = {(name.split(".")[0], p.dtype) for name, module in named_adapters(base_copy)
                  for p in module.parameters()}
    finally:
        base_copy.sam_mask_decoder.float()
    assert dtypes == {("image_encoder", torch.float32), ("memory_attention", torch.float32),
                      ("sam_mask_decoder", torch.bfloat16)}


def test_adapters_run_under_bf16_autocast(trained, trained_site_outputs):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _site_outputs(trained)
    full = trained_site_outputs
    for a, b in zip(low, full, strict=True):
        assert torch.isfinite(a).all()
        assert (a.float() - b).abs().mean() < 0.05 * b.abs().mean()


def test_save_then_load_gives_identical_outputs(base_copy, trained, trained_features,
                                                adapter_file, base_sha):
    read = read_adapter_file(adapter_file)
    info, tensors = read.info, read.tensors
    assert info.base_model_name == TINY and info.image_size == TEST_IMAGE_SIZE
    assert info.base_checkpoint_sha256 == base_sha and not info.includes_decoder
    assert set(tensors) == set(adapter_state_dict(trained))
    assert adapter_file.stat().st_size < 2_000_000
    loaded = base_copy
    load_adapters(loaded, adapter_file, base_model_name=TINY, base_checkpoint_sha256=base_sha,
                  image_size=TEST_IMAGE_SIZE)
    ours, theirs = adapter_state_dict(loaded), adapter_state_dict(trained)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert all(torch.equal(a, b) for a, b in zip(_features(loaded), trained_features))


def test_a_trained_decoder_travels_with_the_adapters(adapted, tiny_model, base_sha, tmp_path):
    model = _perturb(adapted)
    freeze_base(model, train_decoder=True)
    with torch.no_grad():
        model.sam_mask_decoder.iou_token.weight.add_(1.0)
    trained_token = model.sam_mask_decoder.iou_token.weight.detach().clone()
    path = save_adapters(model, tmp_path / "a.safetensors", base_model_name=TINY,
                         base_checkpoint_sha256=base_sha, image_size=TEST_IMAGE_SIZE)
    _restore(model, tiny_model)
    info = load_adapters(model, path, base_model_name=TINY, base_checkpoint_sha256=base_sha,
                         image_size=TEST_IMAGE_SIZE)
    assert info.includes_decoder
    assert torch.equal(model.sam_mask_decoder.iou_token.weight, trained_token)


def _rewrite(path, tmp_path, drop_key=False, metadata=None):
    from safetensors.torch import save_file

    read = read_adapter_file(path)
    info, tensors = read.info, dict(read.tensors)
    meta = info.metadata() if metadata is None else metadata
    if drop_key:
        tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(tmp_path / "edited.safetensors"), meta)
    return tmp_path / "edited.safetensors"


REFUSALS = {
    "wrong base model": ({"base_model_name": "sam2.1_hiera_small"}, None,
                         "trained for sam2.1_hiera_tiny, not sam2.1_hiera_small"),
    "wrong checkpoint": ({"base_checkpoint_sha256": "0" * 64}, None, "SHA-256"),
    "random base": ({"base_checkpoint_sha256": None}, None, "random weights"),
    "wrong image size": ({"image_size": 512}, None, "--image-size 256"),
    "truncated": ({}, lambda p, t: t.joinpath("x.safetensors").write_bytes(
        p.read_bytes()[:5000]) and t / "x.safetensors", "corrupt"),
    "garbage": ({}, lambda p, t: t.joinpath("x.safetensors").write_bytes(
        b"\x00" * 64) and t / "x.safetensors", "corrupt"),
    "tensor missing": ({}, lambda p, t: _rewrite(p, t, drop_key=True), "1 missing"),
    "foreign safetensors": ({}, lambda p, t: _rewrite(p, t, metadata={"a": "b"}),
                            "not a sam2refine adapter file"),
    "absent": ({}, lambda p, t: t / "nowhere.safetensors", "not found"),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_mismatched_or_damaged_adapter_files_are_refused(base_copy, adapter_file, base_sha,
                                                         tmp_path, case):
    change, make_file, message = REFUSALS[case]
    kwargs = {"base_model_name": TINY, "base_checkpoint_sha256": base_sha,
              "image_size": TEST_IMAGE_SIZE, **change}
    path = make_file(adapter_file, tmp_path) if make_file else adapter_file
    with pytest.raises(AdapterError, match=message):
        load_adapters(base_copy, path, **kwargs)
    assert adapter_config(base_copy) is None and not named_adapters(base_copy)  # untouched


def test_merging_folds_the_neck_adapters_without_changing_outputs(trained, trained_features,
                                                                  trained_site_outputs):
    model = copy.deepcopy(trained)
    merged = merge_adapters(model)
    assert merged == [f"image_encoder.neck.convs.{i}.conv.adapter" for i in range(4)]
    assert merged_adapters(model) == tuple(merged)
    assert len(named_adapters(model)) == 12 + 4 + 7  # encoder, memory, decoder stay
    assert _same(_features(model), trained_features, atol=1e-5)
    assert _same(_site_outputs(model), trained_site_outputs, atol=1e-5)
    for ours, theirs in zip(model.image_encoder.neck.convs, trained.image_encoder.neck.convs):
        assert not hasattr(ours.conv, "adapter") and not ours.conv._forward_hooks
        assert not torch.allclose(ours.conv.weight, theirs.conv.weight)
    with pytest.raises(AdapterError, match="merged"):
        remove_adapters(model)
    with pytest.raises(AdapterError, match="merged"):
        save_adapters(model, "unused.safetensors", base_model_name=TINY,
                      base_checkpoint_sha256=None, image_size=TEST_IMAGE_SIZE)


def test_build_model_attaches_adapters_only_to_their_checkpoint(trained_features,
                                                                tiny_checkpoint, adapter_file):
    model = build_model(TINY, TEST_IMAGE_SIZE, tiny_checkpoint, "cpu", adapters=adapter_file)
    assert all(torch.equal(a, b) for a, b in zip(_features(model), trained_features))
    with pytest.raises(AdapterError, match="random weights"):
        build_model(TINY, TEST_IMAGE_SIZE, None, "cpu", adapters=adapter_file)


def test_cli_segment_uses_adapters(tmp_path, tiny_checkpoint, adapter_file, caplog, capsys):
    volume = make_phantom((2, 40, 48))
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "ct.nii.gz"))
    prompts = {"coordinates": "ijk",
               "segments": [{"name": "organ", "points": [{"position": [19, 20, 1]}]}]}
    (tmp_path / "prompts.json").write_text(json.dumps(prompts))
    args = ["segment", str(tmp_path / "ct.nii.gz"), "--prompts", str(tmp_path / "prompts.json"),
            "--out", str(tmp_path / "seg.nii.gz"), "--image-size", str(TEST_IMAGE_SIZE),
            "--device", "cpu", "--checkpoint", str(tiny_checkpoint)]
    with caplog.at_level(logging.INFO):
        assert main([*args, "--adapters", str(adapter_file)]) == 0
    assert "Adapters" in caplog.text and (tmp_path / "seg.nii.gz").is_file()
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "seg.nii.gz")))
    assert labels.shape == volume.voxels.shape and np.isin(labels, [0, 1]).all()
    assert main([*args, "--adapters", str(tmp_path / "missing.safetensors")]) == 2
    assert "Adapter file not found" in capsys.readouterr().err


def test_cli_serve_refuses_a_missing_adapter_file_before_loading(tmp_path, tiny_checkpoint,
                                                                 capsys):
    args = ["serve", "--port", "0", "--device", "cpu", "--image-size", str(TEST_IMAGE_SIZE),
            "--checkpoint", str(tiny_checkpoint), "--adapters", str(tmp_path / "no.safetensors")]
    assert main(args) == 2
    assert "Adapter file not found" in capsys.readouterr().err


def test_cli_auto_refuses_a_missing_adapter_file_before_loading(tmp_path, tiny_checkpoint,
                                                                capsys):
    volume = make_phantom((2, 40, 48))
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "ct.nii.gz"))
    args = ["auto", str(tmp_path / "ct.nii.gz"), "--out", str(tmp_path / "seg.seg.nrrd"),
            "--prompts-from", str(tmp_path / "ct.nii.gz"), "--device", "cpu",
            "--image-size", str(TEST_IMAGE_SIZE), "--checkpoint", str(tiny_checkpoint),
            "--adapters", str(tmp_path / "no.safetensors")]
    assert main(args) == 2
    assert "Adapter file not found" in capsys.readouterr().err
    assert not (tmp_path / "seg.seg.nrrd").exists()
