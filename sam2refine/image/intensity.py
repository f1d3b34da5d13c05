"""Intensity presets (CT windows, MR percentiles) and the SAM 2 model input tensor.

One intensity range is chosen for the whole volume, so every slice (video frame) is scaled
the same way and SAM 2's memory sees consistent contrast from slice to slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sam2refine.errors import VolumeError

# name -> (level, width) in Hounsfield units; common radiology display windows.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
DEFAULT_CT_WINDOW = "abdomen"


# Percentiles are computed on at most this many voxels (an even stride through the volume).
_PERCENTILE_SAMPLE = 1 << 22


@dataclass(frozen=True)
class IntensityPreset:
    """How voxel values become image brightness: a fixed CT window or MR percentiles."""

    kind: str  # "ct" or "mr"
    window: str | None  # CT window name (a key of CT_WINDOWS); None for MR
    low_pct: float = 0.5  # MR: the percentile shown black
    high_pct: float = 99.5  # MR: the percentile shown white


def preset_names() -> list[str]:
    """Every name `parse_preset` accepts."""
    return ["ct", *(f"ct-{w}" for w in CT_WINDOWS), "mr"]


def parse_preset(name: str) -> IntensityPreset:
    """'ct' (abdomen window), 'ct-<window>' (e.g. 'ct-lung') or 'mr' -> a preset."""
    key = str(name).strip().lower()
    if key == "ct":
        return IntensityPreset("ct", DEFAULT_CT_WINDOW)
    if key.startswith("ct-") and key[3:] in CT_WINDOWS:
        return IntensityPreset("ct", key[3:])
    if key in ("mr", "mri"):
        return IntensityPreset("mr", None)
    raise VolumeError(
        f"Unknown intensity preset '{name}'; use one of: {', '.join(preset_names())}. "
        "Use a 'ct' preset for CT in Hounsfield units and 'mr' for MR."
    )


def normalize(voxels: np.ndarray, preset: IntensityPreset) -> tuple[float, float]:
    """The (low, high) voxel-value range shown black..white for the whole volume.

    CT uses the preset's window; MR uses percentiles of the voxel values (sampled evenly on
    large volumes). A range that would make every slice one flat colour is a `VolumeError`.
    """
    voxels = np.asarray(voxels)
    if voxels.size == 0:
        raise VolumeError("The volume has no voxels; nothing to segment.")
    sample = _sample(voxels)
    if preset.kind == "ct":
        if preset.window not in CT_WINDOWS:
            raise VolumeError(
                f"Unknown CT window '{preset.window}'; use one of: {', '.join(CT_WINDOWS)}."
            )
        level, width = CT_WINDOWS[preset.window]
        low, high = level - width / 2.0, level + width / 2.0
        inside = np.count_nonzero((sample > low) & (sample < high))
        if inside == 0:
            raise VolumeError(
                f"No voxel value lies inside the CT {preset.window} window ({low:g} to {high:g} "
                f"HU; the volume spans {float(sample.min()):g} to {float(sample.max()):g}). "
                "Is this a CT in Hounsfield units? For MR use the 'mr' preset, otherwise "
                "choose another CT window."
            )
        return float(low), float(high)
    if preset.kind == "mr":
        if not 0.0 <= preset.low_pct < preset.high_pct <= 100.0:
            raise VolumeError(
                f"MR percentiles {preset.low_pct}..{preset.high_pct} are invalid; "
                "give 0 <= low < high <= 100."
            )
        low, high = np.percentile(sample.astype(np.float64), [preset.low_pct, preset.high_pct])
        if not np.isfinite([low, high]).all() or high <= low:
            raise VolumeError(
                f"The MR intensity range is degenerate ({preset.low_pct}th and "
                f"{preset.high_pct}th percentiles are both {float(low):g}): almost every voxel "
                "has the same value. Check that this is the right image."
            )
        return float(low), float(high)
    raise VolumeError(f"Unknown preset kind '{preset.kind}'; use 'ct' or 'mr'.")


def _sample(voxels: np.ndarray) -> np.ndarray:
    """At most about `_PERCENTILE_SAMPLE` voxels, evenly spread, without copying the volume."""
    if voxels.size <= _PERCENTILE_SAMPLE:
        return voxels.reshape(-1)
    if voxels.flags.c_contiguous:
        return voxels.reshape(-1)[:: voxels.size // _PERCENTILE_SAMPLE]
    step = int(np.ceil((voxels.size / _PERCENTILE_SAMPLE) ** (1.0 / voxels.ndim)))
    return voxels[(slice(None, None, step),) * voxels.ndim].reshape(-1)


def frames_to_unit(frames: np.ndarray, low: float, high: float) -> np.ndarray:
    """Frames -> float32 in [0, 1]: `low` and below is 0, `high` and above is 1."""
    if not high > low:
        raise VolumeError(
            f"Intensity range {low:g}..{high:g} is empty; the upper value must be above the lower."
        )
    out = np.array(frames, dtype=np.float32)  # always a copy
    out -= np.float32(low)
    out *= np.float32(1.0 / (high - low))
    np.clip(out, 0.0, 1.0, out=out)
    return out
