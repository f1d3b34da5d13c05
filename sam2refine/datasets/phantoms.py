"""Synthetic abdominal CT phantoms with organ labels, written as an nnU-Net raw dataset.

They let the automatic pipeline, fine-tuning and evaluation run end to end without real data,
and are built to catch the mistakes real data would: anisotropic voxels, non-square slices,
an LPS direction that is not the identity (as NIfTI files stored in RAS order have), organs
covering only part of the slices, and organs that a threshold alone cannot separate (liver
and spleen HU overlap within the noise, kidneys look like muscle and bowel and only the thin
perirenal fat around them outlines them, a contrast enhanced aorta looks like vertebral bone,
which is present but not labelled).

Positions are in patient millimetres (x towards the left, y posterior, z superior) relative to
the volume centre, as fractions of the body size, so any grid size gives the same anatomy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam2refine.errors import DatasetError
from sam2refine.image.volume import Volume
from sam2refine.io.atomic import atomic_write

# Names as TotalSegmentator uses them, so the phantom's labels match its prompt sources.
PHANTOM_ORGANS: dict[str, int] = {
    "liver": 1,
    "spleen": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "aorta": 5,
}
DEFAULT_SHAPE_KJI = (48, 80, 96)  # slices are wider (left-right) than deep, as a body is
DEFAULT_SPACING = (1.5, 1.5, 4.0)  # mm along i, j, k
_DIRECTION = np.diag([-1.0, -1.0, 1.0])  # i towards patient right, j anterior, k superior
_AIR_HU = -1000.0


@dataclass
class _Grid:
    """Voxel-centre coordinates in mm relative to the volume centre, each of shape [k, j, i]."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    half: tuple[float, float, float]  # half field of view along x, y, z
    body: tuple[float, float, float] = (0.0, 0.0, 0.0)  # body half-size along x, y; half z


def make_phantom_case(
    seed: int,
    shape_kji: tuple[int, int, int] = DEFAULT_SHAPE_KJI,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> tuple[Volume, Volume]:
    """One CT-like phantom: (image in HU as int16, labels as uint8 with `PHANTOM_ORGANS`).

    Every seed gives another anatomy (organ size, position, rotation, shape and HU), the same
    seed always the same volumes. `spacing` is (i, j, k) in mm.
    """
    shape_kji = tuple(int(n) for n in shape_kji)
    if len(shape_kji) != 3 or min(shape_kji) < 8:
        raise DatasetError(f"A phantom needs at least 8 voxels along each axis; got {shape_kji}.")
    rng = np.random.default_rng(seed)
    grid = _make_grid(shape_kji, spacing)
    hu = _tissue_values(rng)
    image = np.full(shape_kji, _AIR_HU, dtype=np.float32)
    labels = np.zeros(shape_kji, dtype=np.uint8)

    cavity = _paint_body(image, grid, hu, rng)
    _paint_muscles(image, grid, hu)
    _paint_organs(image, labels, grid, hu, cavity, rng)
    _paint_spine(image, labels, grid, hu)
    image = _add_noise_and_blur(image, grid, spacing, hu, rng)

    origin = np.array([grid.half[0], grid.half[1], -grid.half[2]]) + rng.uniform(-20, 20, 3)
    origin -= np.array([spacing[0], spacing[1], -spacing[2]]) / 2  # centre of voxel (0, 0, 0)
    volume = Volume(image, spacing, origin, _DIRECTION.copy())
    return volume, volume.with_voxels(labels)


def write_phantom_dataset(
    out_dir: str | Path,
    num_cases: int,
    seed: int = 0,
    shape_kji: tuple[int, int, int] = DEFAULT_SHAPE_KJI,
    spacing: tuple[float, float, float] = DEFAULT_SPACING,
) -> Path:
    """Write `num_cases` phantoms in nnU-Net v2 raw format into `out_dir`; returns `out_dir`.

    Files are named ``phantom_000_0000.nii.gz`` (imagesTr) and ``phantom_000.nii.gz``
    (labelsTr); each is written atomically and dataset.json last, so an interrupted run
    leaves no folder that reads as complete. Case n uses seed (seed, n).
    """
    out = Path(out_dir).expanduser()
    if num_cases < 1:
        raise DatasetError(f"Give at least one case to generate; got {num_cases}.")
    case_ids = [f"phantom_{n:03d}" for n in range(num_cases)]
    _refuse_foreign_files(out, case_ids)
    for n, case_id in enumerate(case_ids):
        case_seed = int(np.random.SeedSequence([seed, n]).generate_state(1)[0])
        image, labels = make_phantom_case(case_seed, shape_kji, spacing)
        _write_nifti(out / "imagesTr" / f"{case_id}_0000.nii.gz", image)
        _write_nifti(out / "labelsTr" / f"{case_id}.nii.gz", labels)
    meta = {
        "name": "SAM2RefinePhantoms",
        "description": f"Synthetic abdominal CT phantoms (sam2refine phantoms, seed {seed}).",
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **PHANTOM_ORGANS},
        "numTraining": num_cases,
        "file_ending": ".nii.gz",
    }
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / "dataset.json", lambda tmp: tmp.write_text(text, "utf-8"))
    return out


# ----- geometry and tissue values ---------------------------------------------------------------
def _make_grid(shape_kji: tuple[int, ...], spacing: tuple[float, float, float]) -> _Grid:
    nk, nj, ni = shape_kji
    sx, sy, sz = (float(s) for s in spacing)
    # Index i grows towards the patient's right (direction -x), j anterior (-y), k superior (+z).
    x = -(np.arange(ni, dtype=np.float32) - (ni - 1) / 2) * sx
    y = -(np.arange(nj, dtype=np.float32) - (nj - 1) / 2) * sy
    z = (np.arange(nk, dtype=np.float32) - (nk - 1) / 2) * sz
    zz, yy, xx = np.meshgrid(z, y, x, indexing="ij")
    return _Grid(xx, yy, zz, (ni * sx / 2, nj * sy / 2, nk * sz / 2))


def _tissue_values(rng: np.random.Generator) -> dict[str, float]:
    """Per-case mean HU; the ranges overlap on purpose (see the module docstring)."""
    contrast = rng.random() < 0.5
    return {
        "fat": rng.uniform(-110, -85),
        "muscle": rng.uniform(38, 50),
        "bowel": rng.uniform(28, 58),
        "liver": rng.uniform(52, 64),
        "spleen": rng.uniform(47, 58),
        "kidney_cortex": rng.uniform(30, 40),
        "kidney_medulla": rng.uniform(18, 26),
        "aorta": rng.uniform(170, 240) if contrast else rng.uniform(35, 48),
        "vessel": rng.uniform(110, 170) if contrast else rng.uniform(32, 45),
        "cancellous": rng.uniform(170, 250),
        "cortical": rng.uniform(400, 600),
        "csf": rng.uniform(5, 15),
        "noise": rng.uniform(30, 38),  # white noise before blurring, about 12-15 HU after
    }


def _ellipse(grid: _Grid, cx: float, cy: float, ax: float, ay: float) -> np.ndarray:
    return ((grid.x - cx) / ax) ** 2 + ((grid.y - cy) / ay) ** 2 <= 1.0


def _rotation(rng: np.random.Generator, max_degrees: tuple[float, float, float]) -> np.ndarray:
    rot = np.eye(3)
    for axis, limit in enumerate(max_degrees):
        angle = np.radians(rng.uniform(-limit, limit))
        c, s = np.cos(angle), np.sin(angle)
        a, b = [n for n in range(3) if n != axis]
        step = np.eye(3)
        step[a, a], step[a, b], step[b, a], step[b, b] = c, -s, s, c
        rot = rot @ step
    return rot


def _blob_radius(
    grid: _Grid,
    centre: np.ndarray,
    semi_axes: np.ndarray,
    rotation: np.ndarray,
    rng: np.random.Generator,
    scale: float = 1.0,
) -> np.ndarray:
    """A deformed, rotated ellipsoid (its radius varies smoothly with direction by up to ~20%)
    as each voxel's distance from `centre` relative to the surface there: the blob is <= 1,
    <= 1.3 adds a shell around it shaped like the blob."""
    offset = np.stack([grid.x - centre[0], grid.y - centre[1], grid.z - centre[2]], axis=-1)
    u = (offset @ rotation) / (semi_axes * scale)
    radius = np.sqrt(np.sum(u**2, axis=-1)) + 1e-6
    unit = u / radius[..., None]
    bound = np.ones_like(radius)
    for _ in range(3):
        wave = rng.normal(size=3)
        wave *= rng.uniform(1.5, 3.0) / np.linalg.norm(wave)
        bound += rng.uniform(0.03, 0.08) * np.cos(np.pi * unit @ wave + rng.uniform(0, 2 * np.pi))
    return radius / bound


# ----- painting ---------------------------------------------------------------------------------
def _paint_body(
    image: np.ndarray, grid: _Grid, hu: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Fat-covered body with a muscle wall; returns the abdominal cavity (bowel and fat)."""
    hx, hy, hz = grid.half
    bx, by = hx * rng.uniform(0.84, 0.93), hy * rng.uniform(0.8, 0.9)
    waist = 1.0 + 0.04 * np.sin(np.pi * grid.z / hz + rng.uniform(0, np.pi))
    body = _ellipse(grid, 0.0, 0.0, bx * waist, by * waist)
    wall = _ellipse(grid, 0.0, 0.0, bx * waist * 0.9, by * waist * 0.88)
    cavity = _ellipse(grid, 0.0, 0.0, bx * waist * 0.83, by * waist * 0.8)
    image[body] = hu["fat"]
    image[wall] = hu["muscle"]
    bowel = _smooth_field(rng, image.shape, sigma_vox=(1.0, 3.0, 3.0)) > 0.1
    image[cavity] = np.where(bowel[cavity], hu["bowel"], hu["fat"])
    grid.body = (bx, by, hz)  # organs are placed relative to the body
    return cavity


def _paint_muscles(image: np.ndarray, grid: _Grid, hu: dict[str, float]) -> None:
    """Psoas (lower half) and back muscles beside the spine: kidney-like intensities."""
    bx, by, hz = grid.body
    for side in (-1.0, 1.0):
        psoas = _ellipse(grid, side * 0.2 * bx, 0.55 * by, 0.09 * bx, 0.12 * by)
        psoas &= grid.z < 0.3 * hz
        back = _ellipse(grid, side * 0.14 * bx, 0.9 * by, 0.1 * bx, 0.09 * by)
        image[psoas | back] = hu["muscle"]


def _paint_organs(
    image: np.ndarray,
    labels: np.ndarray,
    grid: _Grid,
    hu: dict[str, float],
    cavity: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Organs inside the cavity; later organs win where shapes overlap (organs may touch)."""
    bx, by, hz = grid.body
    jitter = rng.uniform(-0.05, 0.05, size=(5, 3)) * np.array([bx, by, hz])
    specs = {  # centre, semi-axes (fractions of body half-size), maximum rotation in degrees
        "liver": ((-0.42, -0.08, 0.35), (0.42, 0.5, 0.35), (8, 8, 20)),
        "spleen": ((0.5, 0.28, 0.4), (0.2, 0.3, 0.25), (10, 10, 25)),
        "kidney_left": ((0.42, 0.45, -0.15), (0.16, 0.24, 0.25), (10, 10, 30)),
        "kidney_right": ((-0.42, 0.45, -0.25), (0.16, 0.24, 0.25), (10, 10, 30)),
    }
    size = np.array([bx, by, hz])
    for n, (name, (centre, axes, max_rot)) in enumerate(specs.items()):
        centre_mm = np.array(centre) * size + jitter[n]
        axes_mm = np.array(axes) * size * rng.uniform(0.85, 1.15, 3)
        rot = _rotation(rng, max_rot)
        radius = _blob_radius(grid, centre_mm, axes_mm, rot, rng)
        organ = (radius <= 1.0) & cavity
        image[organ] = hu["kidney_cortex"] if name.startswith("kidney") else hu[name]
        if name.startswith("kidney"):  # in perirenal fat (a few mm), as kidneys are
            perirenal = (radius <= rng.uniform(1.2, 1.4)) & cavity & ~organ & (labels == 0)
            image[perirenal] = hu["fat"]
            medulla = (_blob_radius(grid, centre_mm, axes_mm, rot, rng, 0.6) <= 1.0) & organ
            image[medulla] = hu["kidney_medulla"]
        if name == "liver":  # patchy parenchyma and intrahepatic vessels, all labelled liver
            patches = _smooth_field(rng, image.shape, sigma_vox=(1.0, 2.0, 2.0))
            image[organ] += 10.0 * patches[organ]
            image[_vessels(grid, centre_mm, axes_mm, rng) & organ] = hu["vessel"]
        labels[organ] = PHANTOM_ORGANS[name]
    aorta = _aorta(grid, rng) & cavity
    image[aorta] = hu["aorta"]
    labels[aorta] = PHANTOM_ORGANS["aorta"]


def _vessels(
    grid: _Grid, centre: np.ndarray, semi_axes: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Three to five straight tubes branching out from near an organ's centre."""
    points = np.stack([grid.x, grid.y, grid.z], axis=-1)
    tubes = np.zeros(grid.x.shape, bool)
    radius = 0.05 * grid.body[1] * rng.uniform(0.8, 1.3)
    start = centre + rng.uniform(-0.2, 0.2, 3) * semi_axes
    for _ in range(rng.integers(3, 6)):
        end = centre + rng.uniform(-0.8, 0.8, 3) * semi_axes
        step = end - start
        t = np.clip((points - start) @ step / float(step @ step + 1e-6), 0.0, 1.0)
        tubes |= np.sum((points - start - t[..., None] * step) ** 2, axis=-1) <= radius**2
    return tubes


def _aorta(grid: _Grid, rng: np.random.Generator) -> np.ndarray:
    """A slightly curved tube in front of the spine, ending above the bottom slice."""
    bx, by, hz = grid.body
    t = grid.z / hz
    cx = (0.08 + 0.03 * np.sin(np.pi * t + rng.uniform(0, np.pi))) * bx
    cy = 0.3 * by + 0.02 * by * t
    radius = 0.1 * by * rng.uniform(0.9, 1.15)
    low, high = rng.uniform(-0.8, -0.6), rng.uniform(0.75, 0.9)
    return ((grid.x - cx) ** 2 + (grid.y - cy) ** 2 <= radius**2) & (t >= low) & (t <= high)


def _paint_spine(image: np.ndarray, labels: np.ndarray, grid: _Grid, hu: dict[str, float]) -> None:
    """Vertebral body and arch on every slice: bone and CSF, not labelled (a distractor)."""
    bx, by, _ = grid.body
    cy, ry, rx = 0.62 * by, 0.15 * by, 0.17 * by
    shell = max(2.0, 0.25 * ry)
    vertebra = _ellipse(grid, 0.0, cy, rx, ry)
    inner = _ellipse(grid, 0.0, cy, rx - shell, ry - shell)
    arch = _ellipse(grid, 0.0, cy + 1.6 * ry, 0.6 * rx, 0.65 * ry)
    canal = _ellipse(grid, 0.0, cy + 1.6 * ry, 0.6 * rx - shell, 0.65 * ry - shell)
    image[vertebra | arch] = hu["cortical"]
    image[inner] = hu["cancellous"]
    image[canal] = hu["csf"]
    labels[vertebra | arch] = 0


def _smooth_field(
    rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: tuple[float, float, float]
) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation ([k, j, i] sigmas)."""
    noise = sitk.GetImageFromArray(rng.normal(size=shape).astype(np.float32))
    smooth = sitk.GetArrayFromImage(
        sitk.SmoothingRecursiveGaussian(noise, [sigma_vox[2], sigma_vox[1], sigma_vox[0]])
    )
    return (smooth - smooth.mean()) / (smooth.std() + 1e-6)


def _add_noise_and_blur(
    image: np.ndarray,
    grid: _Grid,
    spacing: tuple[float, float, float],
    hu: dict[str, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Smooth intensity drift inside the body, white noise, then a slight in-plane blur."""
    body = image > _AIR_HU + 1
    image = image + body * 5.0 * _smooth_field(rng, image.shape, (1.5, 6.0, 6.0))
    image = image + rng.normal(0.0, hu["noise"], image.shape).astype(np.float32)
    blurred = sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(image.astype(np.float32)),
        [0.5 * spacing[0], 0.5 * spacing[1], 0.25 * spacing[2]],
    )
    blurred.SetSpacing(tuple(float(s) for s in spacing))
    out = sitk.GetArrayFromImage(blurred)
    return np.clip(np.round(out), -1024, 3071).astype(np.int16)


# ----- writing ----------------------------------------------------------------------------------
def _write_nifti(path: Path, volume: Volume) -> None:
    image = volume.to_sitk()
    atomic_write(path, lambda tmp: sitk.WriteImage(image, str(tmp), useCompression=True))


def _refuse_foreign_files(out: Path, case_ids: list[str]) -> None:
    """Never mix phantoms into another dataset, or leave extra cases from an earlier run."""
    expected = {f"imagesTr/{c}_0000.nii.gz" for c in case_ids}
    expected |= {f"labelsTr/{c}.nii.gz" for c in case_ids}
    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        directory = out / folder
        if not directory.is_dir():
            continue
        foreign = sorted(p.name for p in directory.iterdir()
                         if f"{folder}/{p.name}" not in expected and not p.name.startswith("."))
        if foreign:
            raise DatasetError(
                f"{directory} already holds other files ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}); write the phantoms into an empty or "
                "new folder."
            )
