"""Checkpoints are read without running code from them, and every failure names the file,
what it should have been and what to do (for SAM 2 weights, prompt generators, fine-tuning)."""

from __future__ import annotations

import pytest
import torch

from sam2refine.io.torch_files import load_weights_only


class SomeError(Exception):
    pass


class NotATensor:
    pass


def test_plain_tensors_load(tmp_path):
    path = tmp_path / "ok.pt"
    torch.save({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    data = load_weights_only(path, SomeError, what="a thing", missing="Gone.", remedy="Do this.")
    assert data["epoch"] == 3 and torch.equal(data["model"]["w"], torch.ones(2))


@pytest.mark.parametrize("content", [b"", b"junk", b"garbage bytes", b"PK\x03\x04broken zip"])
def test_damaged_files_name_what_they_should_be(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(SomeError, match=r"bad\.pt could not be read as a thing .*corrupt or "
                                        r"truncated.* Do this\.$"):
        load_weights_only(path, SomeError, what="a thing", missing="Gone.", remedy="Do this.")


def test_pickled_python_objects_are_refused_as_unsafe(tmp_path):
    path = tmp_path / "unsafe.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": NotATensor()}, path)
    with pytest.raises(SomeError, match=r"Python objects besides tensors.*weights_only=False"
                                        r".* Do this\.$"):
        load_weights_only(path, SomeError, what="a thing", missing="Gone.", remedy="Do this.")


def test_a_missing_file_gets_the_callers_message(tmp_path):
    with pytest.raises(SomeError, match=r"^Gone\.$"):
        load_weights_only(tmp_path / "nothing.pt", SomeError, what="a thing", missing="Gone.",
                          remedy="Do this.")
