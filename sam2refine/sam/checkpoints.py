"""SAM 2 checkpoint files: read safely (weights only), check against a model, name their size."""

from __future__ import annotations

from pathlib import Path

import torch

from sam2refine.errors import CheckpointError
from sam2refine.io.torch_files import load_weights_only

# Hiera trunk depth identifies the model size inside a checkpoint.
_TRUNK_DEPTHS = {12: "sam2.1_hiera_tiny", 16: "sam2.1_hiera_small", 24: "sam2.1_hiera_base_plus",
                 48: "sam2.1_hiera_large"}


def save_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    """Save weights in the official SAM 2 format, `{"model": state_dict}`."""
    path = Path(path)
    torch.save({"model": model.state_dict()}, path)
    return path


def load_checkpoint(model: torch.nn.Module, path: str | Path, expected_name: str = "") -> None:
    """Load an official-format checkpoint into `model`, refusing anything unsafe or mismatched."""
    state = read_state_dict(path)
    _check_compatible(model, state, Path(path), expected_name)
    model.load_state_dict(state, strict=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint with `weights_only=True`; every failure becomes a CheckpointError."""
    loaded = load_weights_only(
        path, CheckpointError, what="a SAM 2 checkpoint",
        missing=f"Checkpoint not found: {path}. Check the path, or leave --checkpoint out to use "
                "the downloaded official weights.",
        remedy="Delete it and download it again, or re-save your own weights as "
               "{'model': model.state_dict()} (the official SAM 2 format).")
    state = loaded.get("model", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(
            f"{path} is not a SAM 2 checkpoint: expected {{'model': state_dict}} with tensors."
        )
    return state


def _check_compatible(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, expected_name: str
) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not (missing or unexpected or mismatched):
        return
    guess = guess_model_name(state)
    parts = [f"{len(missing)} missing", f"{len(unexpected)} unexpected",
             f"{len(mismatched)} with another shape"]
    example = ""
    if mismatched:
        k = mismatched[0]
        example = f" e.g. {k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)};"
    elif missing:
        example = f" e.g. missing {missing[0]};"
    elif unexpected:
        example = f" e.g. unexpected {unexpected[0]};"
    hint = f" It looks like a {guess} checkpoint." if guess else ""
    raise CheckpointError(
        f"Checkpoint {path} does not fit model {expected_name or type(model).__name__}: "
        f"{', '.join(parts)} parameters;{example}{hint} Pass the matching --model, or the "
        "checkpoint of this model."
    )


def guess_model_name(state: dict[str, torch.Tensor]) -> str | None:
    """Guess which SAM 2.1 size a state dict belongs to from its Hiera trunk depth."""
    blocks = {int(k.split(".")[3]) for k in state if k.startswith("image_encoder.trunk.blocks.")}
    return _TRUNK_DEPTHS.get(len(blocks)) if blocks else None
