"""Building SAM 2.1 and loading checkpoints: the official format loads, everything else is
refused with a message that says what is wrong."""

from __future__ import annotations

import pytest
import torch

from sam2refine.errors import CheckpointError, SAM2RefineError
from sam2refine.runtime import resolve_device
from sam2refine.sam.checkpoints import guess_model_name, load_checkpoint, read_state_dict
from sam2refine.sam.model import build_model
from tests.conftest import TEST_IMAGE_SIZE


class NotATensor:
    """A class that only an unrestricted unpickler could rebuild."""


def test_official_format_round_trip_gives_identical_weights(tiny_model, tiny_checkpoint):
    saved = torch.load(tiny_checkpoint, weights_only=True)
    assert set(saved) == {"model"}
    for name, value in tiny_model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name


def test_checkpoint_from_another_image_size_loads(tiny_checkpoint):
    model = build_model("sam2.1_hiera_tiny", 512, tiny_checkpoint, "cpu")
    assert model.image_size == 512


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tmp_path / "nope.pt")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken zip"])
def test_corrupt_checkpoint(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(path)


def test_truncated_checkpoint(tmp_path, tiny_checkpoint):
    path = tmp_path / "truncated.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[: 1 << 20])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_state_dict(path)


def test_pickle_that_needs_weights_only_false_is_refused(tmp_path, tiny_model):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": tiny_model.state_dict(), "extra": NotATensor()}, path)
    with pytest.raises(CheckpointError, match="weights_only=False"):
        read_state_dict(path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        read_state_dict(path)


def test_wrong_model_size_is_named(tmp_path):
    torch.manual_seed(0)
    small = build_model("sam2.1_hiera_small", TEST_IMAGE_SIZE, None, "cpu")
    path = tmp_path / "small.pt"
    torch.save({"model": small.state_dict()}, path)
    assert guess_model_name(small.state_dict()) == "sam2.1_hiera_small"
    tiny = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, None, "cpu")
    with pytest.raises(CheckpointError, match=r"sam2\.1_hiera_small checkpoint") as info:
        load_checkpoint(tiny, path, "sam2.1_hiera_tiny")
    assert "unexpected" in str(info.value) and "--model" in str(info.value)


def test_unknown_model_and_size():
    with pytest.raises(SAM2RefineError, match="Unknown model"):
        build_model("sam3_giant", TEST_IMAGE_SIZE)
    with pytest.raises(SAM2RefineError, match="not supported"):
        build_model("sam2.1_hiera_tiny", 500)


def test_device_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(SAM2RefineError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(SAM2RefineError, match="Unknown device"):
        resolve_device("tpu")
