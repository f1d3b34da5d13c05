"""Shared fixtures: a random-init SAM 2.1 tiny saved like an official checkpoint, phantoms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam2refine.image.volume import Volume

TEST_IMAGE_SIZE = 256  # the smallest supported size keeps CPU tests fast


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """Random-init SAM 2.1 tiny written in the official {"model": state_dict} format."""
    from sam2refine.sam.checkpoints import save_checkpoint
    from sam2refine.sam.model import build_model

    torch.manual_seed(0)
    model = build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, None, "cpu")
    return save_checkpoint(model, tmp_path_factory.mktemp("weights") / "sam2.1_hiera_tiny.pt")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The random-init tiny model loaded back through the official-checkpoint code path."""
    from sam2refine.sam.model import build_model

    return build_model("sam2.1_hiera_tiny", TEST_IMAGE_SIZE, tiny_checkpoint, "cpu")


def rotation(axis: int, degrees: float) -> np.ndarray:
    """Rotation matrix about voxel axis 0, 1 or 2, for oblique test geometries."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [n for n in range(3) if n != axis]
    rot = np.eye(3)
    rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c, -s, s, c
    return rot


def make_phantom(shape_kji=(12, 40, 48), seed: int = 0) -> Volume:
    """CT-like phantom: body at 40 HU in -900 HU air, a brighter ellipsoid organ, noise.

    Anisotropic spacing, non-square slices and an LPS-flipped direction (as NIfTI files
    stored in RAS order have) make geometry mistakes visible.
    """
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape_kji), indexing="ij")
    nk, nj, ni = shape_kji
    body = ((i - ni / 2) / (ni * 0.45)) ** 2 + ((j - nj / 2) / (nj * 0.45)) ** 2 <= 1
    organ = (((i - ni * 0.4) / (ni * 0.2)) ** 2 + ((j - nj * 0.5) / (nj * 0.25)) ** 2
             + ((k - nk * 0.5) / (nk * 0.4)) ** 2) <= 1
    voxels = np.where(body, 40.0, -900.0) + np.where(organ, 110.0, 0.0)
    voxels = (voxels + rng.normal(0, 10, shape_kji)).astype(np.int16)
    direction = np.diag([-1.0, -1.0, 1.0])
    return Volume(voxels, (0.8, 1.2, 3.0), (120.0, 80.0, -40.0), direction)


@pytest.fixture
def phantom() -> Volume:
    return make_phantom()


@pytest.fixture(scope="session")
def totalseg_dir():
    """The shared TotalSegmentator CT examples (read-only, outside the repository)."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "totalseg-example"
    if not (path / "example_ct_sm.nii.gz").is_file():
        pytest.skip(f"shared example data not found at {path} (real-data tests need it)")
    return path
