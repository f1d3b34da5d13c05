"""Adapter files: save / load adapters as safetensors bound to their base model, and merging.

A file holds the adapter tensors under their names in the adapted model's state dict, plus
string metadata: the base model name, the SHA-256 of the base checkpoint they were
trained on (empty for a randomly initialised base), the adapter config and the image size.
Loading checks all of it before touching the model, so a refused file leaves the model as it
was. When fine-tuning also trained the mask decoder (`freeze_base(train_decoder=True)`), its
weights travel in the file too (about 16 MB more for tiny in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sam2refine.errors import AdapterError
from sam2refine.io.atomic import atomic_write
from sam2refine.sam.adapters import (
    MERGED_ATTR,
    TRAINED_DECODER_ATTR,
    AdapterConfig,
    NeckAdapter,
    adapter_config,
    adapter_state_dict,
    add_adapters,
    detach_adapter,
    expected_adapter_shapes,
    named_adapters,
)
from sam2refine.sam.checkpoints import guess_model_name

FORMAT = "sam2refine-adapters"
FORMAT_VERSION = 1
_DECODER_PREFIX = "sam_mask_decoder."


@dataclass(frozen=True)
class AdapterFileInfo:
    """What an adapter file says about itself (its safetensors metadata)."""

    config: AdapterConfig
    base_model_name: str
    base_checkpoint_sha256: str | None  # None: trained on a randomly initialised base
    image_size: int
    includes_decoder: bool

    def metadata(self) -> dict[str, str]:
        return {
            "format": FORMAT, "format_version": str(FORMAT_VERSION),
            "base_model_name": self.base_model_name,
            "base_checkpoint_sha256": self.base_checkpoint_sha256 or "",
            "adapter_config": self.config.to_json(), "image_size": str(self.image_size),
            "includes_decoder": "true" if self.includes_decoder else "false",
        }


def save_adapters(
    model: nn.Module, path: str | Path, *, base_model_name: str,
    base_checkpoint_sha256: str | None, image_size: int, include_decoder: bool | None = None,
) -> Path:
    """Write `model`'s adapters (and, if it was trained, its mask decoder) to `path` atomically.

    `include_decoder=None` follows `freeze_base(train_decoder=...)`.
    """
    from safetensors.torch import save_file

    config = adapter_config(model)
    if config is None:
        raise AdapterError("The model has no adapters to save; call add_adapters first.")
    if merged_adapters(model):
        raise AdapterError("Some adapters were merged into the base weights, so they can no "
                           "longer be saved; save the adapters before merge_adapters().")
    _check_model(model, base_model_name, image_size)
    if include_decoder is None:
        include_decoder = bool(getattr(model, TRAINED_DECODER_ATTR, False))
    info = AdapterFileInfo(config, base_model_name, _normalise_sha(base_checkpoint_sha256),
                           image_size, include_decoder)
    tensors = dict(_decoder_state(model)) if include_decoder else {}
    tensors.update(adapter_state_dict(model))
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), info.metadata()))


@dataclass(frozen=True)
class AdapterFile:
    """An adapter file read once: what it says about itself and its tensors."""

    path: Path
    info: AdapterFileInfo
    tensors: dict[str, torch.Tensor]

    def check_base(self, model_name: str, base_checkpoint_sha256: str | None,
                   image_size: int) -> AdapterFileInfo:
        """Refuse a file made for another base model, checkpoint or image size."""
        _check_base(self.path, self.info, model_name, _normalise_sha(base_checkpoint_sha256),
                    image_size)
        return self.info


def read_adapter_file(path: str | Path) -> AdapterFile:
    """Metadata and tensors of an adapter file; anything unreadable is an AdapterError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterError(f"Adapter file not found: {path}. Check the --adapters path.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterError(f"Adapter file {path} could not be read ({exc}); it is corrupt, "
                           "truncated or not a safetensors file. Copy it again.") from exc
    return AdapterFile(path, _parse_metadata(path, meta), tensors)


def load_adapters(
    model: nn.Module, path: str | Path, *, base_model_name: str,
    base_checkpoint_sha256: str | None, image_size: int,
) -> AdapterFileInfo:
    """Attach the adapters stored in `path` to `model` after checking they were made for it.

    `base_checkpoint_sha256` is the SHA-256 of the checkpoint loaded into `model` (None when
    it has random weights). Every mismatch is an AdapterError naming what differs; the model
    is only changed once everything matches.
    """
    adapter_file = read_adapter_file(path)
    adapter_file.check_base(base_model_name, base_checkpoint_sha256, image_size)
    _check_model(model, base_model_name, image_size)
    return attach_adapters(model, adapter_file)


def attach_adapters(model: nn.Module, adapter_file: AdapterFile) -> AdapterFileInfo:
    """Attach an adapter file whose base was checked (`AdapterFile.check_base`) to `model`."""
    info, path, tensors = adapter_file.info, adapter_file.path, adapter_file.tensors
    _check_model(model, info.base_model_name, info.image_size)
    if merged_adapters(model):
        raise AdapterError("This model's adapters were merged into its weights; load adapter "
                           "files onto a freshly built model.")
    current = adapter_config(model)
    if current is not None and current != info.config:
        raise AdapterError(f"The model already has adapters {current}, but {path} holds "
                           f"{info.config}; load it onto a freshly built model.")
    expected = expected_adapter_shapes(model, info.config)
    if info.includes_decoder:
        expected.update({k: v.shape for k, v in _decoder_state(model).items()})
    _check_tensors(path, expected, tensors)
    add_adapters(model, info.config)
    state = model.state_dict()  # shares storage with the parameters (and buffers)
    with torch.no_grad():
        for key, value in tensors.items():
            state[key].copy_(value)
    return info


def merged_adapters(model: nn.Module) -> tuple[str, ...]:
    """Names of the adapters already folded into base weights by merge_adapters."""
    return getattr(model, MERGED_ATTR, ())


def merge_adapters(model: nn.Module) -> list[str]:
    """Fold every adapter whose math allows it into its host's weights; returns their names.

    Only the FPN neck adapters merge: each is a linear low-rank conv beside a linear conv, so
    the sum is one conv. The encoder, memory and decoder adapters have a GELU between their
    projections, so no base weight can absorb them: they stay attached and keep working.
    A merged model can no longer save its adapters.
    """
    merged = []
    for name, module in named_adapters(model):
        if not isinstance(module, NeckAdapter):
            continue
        host = model.get_submodule(name.rsplit(".", 1)[0])
        module.merge_into(host)
        detach_adapter(host)
        merged.append(name)
    setattr(model, MERGED_ATTR, merged_adapters(model) + tuple(merged))
    return merged


def _decoder_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The mask decoder's own weights (its adapters excluded), keyed as in the model."""
    return {_DECODER_PREFIX + k: v for k, v in model.sam_mask_decoder.state_dict().items()
            if ".adapter." not in k}


def _normalise_sha(sha: str | None) -> str | None:
    if not sha:
        return None
    sha = sha.lower()
    if len(sha) != 64 or set(sha) - set("0123456789abcdef"):
        raise AdapterError(f"{sha!r} is not a SHA-256 hex digest (64 hex digits).")
    return sha


def _parse_metadata(path: Path, meta: dict[str, str]) -> AdapterFileInfo:
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path} is a safetensors file but not a sam2refine adapter file "
                           "(its metadata has no 'format: sam2refine-adapters').")
    try:
        version = int(meta["format_version"])
        info = AdapterFileInfo(
            config=AdapterConfig.from_json(meta["adapter_config"]),
            base_model_name=meta["base_model_name"],
            base_checkpoint_sha256=_normalise_sha(meta["base_checkpoint_sha256"]),
            image_size=int(meta["image_size"]),
            includes_decoder=meta["includes_decoder"] == "true",
        )
    except (KeyError, ValueError, AdapterError) as exc:
        raise AdapterError(f"Adapter file {path} has damaged metadata ({exc}).") from exc
    if version > FORMAT_VERSION:
        raise AdapterError(f"{path} was written by a newer sam2refine (adapter format "
                           f"{version}); update sam2refine to load it.")
    return info


def _check_base(path: str | Path, info: AdapterFileInfo, model_name: str, sha: str | None,
                image_size: int) -> None:
    if info.base_model_name != model_name:
        raise AdapterError(
            f"Adapters {path} were trained for {info.base_model_name}, not {model_name}; "
            f"use --model {info.base_model_name} with the checkpoint they were trained on.")
    if info.image_size != image_size:
        raise AdapterError(
            f"Adapters {path} were trained at image size {info.image_size} px, but the model "
            f"runs at {image_size} px; use --image-size {info.image_size}.")
    if info.base_checkpoint_sha256 == sha:
        return
    if sha is None:
        raise AdapterError(
            f"Adapters {path} were trained on the checkpoint with SHA-256 "
            f"{info.base_checkpoint_sha256}, but the model has random weights (no "
            "checkpoint); pass that checkpoint.")
    if info.base_checkpoint_sha256 is None:
        raise AdapterError(
            f"Adapters {path} were trained on a randomly initialised {model_name}, not on the "
            f"checkpoint given (SHA-256 {sha}); they only work on that random model.")
    raise AdapterError(
        f"Adapters {path} were trained on the {model_name} checkpoint with SHA-256 "
        f"{info.base_checkpoint_sha256}, but the checkpoint given has SHA-256 {sha}; "
        "load the checkpoint they were trained on (adapters only fit their exact base).")


def _check_model(model: nn.Module, model_name: str, image_size: int) -> None:
    """The model in hand must really be `model_name` at `image_size`."""
    actual = guess_model_name(model.state_dict())
    if actual is not None and actual != model_name:
        raise AdapterError(f"The model is a {actual}, not {model_name}.")
    if getattr(model, "image_size", image_size) != image_size:
        raise AdapterError(f"The model runs at {model.image_size} px, not {image_size} px.")


def _check_tensors(path: str | Path, expected: dict[str, torch.Size],
                   tensors: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors)
                   if tuple(tensors[k].shape) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} tensors with another shape (e.g. {k}: "
                        f"{tuple(tensors[k].shape)} vs {tuple(expected[k])})")
    if problems:
        raise AdapterError(f"Adapter file {path} does not match its own adapter config: "
                           f"{'; '.join(problems)}. The file is damaged or was edited.")
