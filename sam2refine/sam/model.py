"""Build SAM 2.1 models from the `sam2` package configs and load checkpoints safely."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch

from sam2refine.errors import CheckpointError, SAM2RefineError
from sam2refine.io.torch_files import load_weights_only
from sam2refine.sam.weights import get_entry, load_catalogue

log = logging.getLogger(__name__)

SUPPORTED_IMAGE_SIZES = (256, 512, 768, 1024)
DEVICES = ("auto", "cuda", "mps", "cpu")

# Hydra overrides that the stock video predictor applies on top of the configs; the session
# uses the same so that its masks match SAM2VideoPredictor's for the same weights.
_VIDEO_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
]

# Hiera trunk depth identifies the model size inside a checkpoint.
_TRUNK_DEPTHS = {12: "sam2.1_hiera_tiny", 16: "sam2.1_hiera_small", 24: "sam2.1_hiera_base_plus",
                 48: "sam2.1_hiera_large"}


def model_names() -> list[str]:
    """Names of the models that can be built (the weights catalogue's keys)."""
    return sorted(load_catalogue())


def image_size_overrides(image_size: int) -> list[str]:
    """Hydra overrides that set the model's input resolution (the RoPE grids follow it)."""
    if image_size not in SUPPORTED_IMAGE_SIZES:
        raise SAM2RefineError(
            f"Image size {image_size} is not supported; use one of {SUPPORTED_IMAGE_SIZES} "
            "(1024 is what SAM 2.1 was trained at, 512 is about 4x faster)."
        )
    grid = image_size // 16
    return [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
    ]


def build_model(
    name: str = "sam2.1_hiera_tiny",
    image_size: int = 1024,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    predictor: bool = False,
    adapters: str | Path | None = None,
) -> torch.nn.Module:
    """Build a SAM 2.1 model in eval mode; load `checkpoint` if given (else random init).

    `predictor=True` builds the stock `SAM2VideoPredictor` class (used by the benchmark).
    `adapters` is a fine-tuned adapter file (`sam2refine.sam.adapter_files`) attached on top; it
    must have been trained on exactly this checkpoint (compared by SHA-256) and image size.
    """
    import sam2  # noqa: F401  (registers the sam2 hydra config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = get_entry(name).config
    base_sha = _check_adapters(adapters, name, image_size, checkpoint) if adapters else None
    overrides = image_size_overrides(image_size) + _VIDEO_OVERRIDES
    if predictor:
        overrides.append("++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor")
    cfg = compose(config_name=config, overrides=overrides)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, expected_name=name)
    if adapters:
        from sam2refine.sam.adapter_files import load_adapters

        info = load_adapters(model, adapters, base_model_name=name,
                             base_checkpoint_sha256=base_sha, image_size=image_size)
        log.info("Adapters %s attached (%s%s)", adapters, info.config,
                 ", with fine-tuned mask decoder" if info.includes_decoder else "")
    return model.to(resolve_device(device)).eval()


def _check_adapters(adapters: str | Path, name: str, image_size: int,
                    checkpoint: str | Path | None) -> str | None:
    """Refuse an adapter file that does not fit before minutes of model loading; returns the
    checkpoint's SHA-256 (None without a checkpoint)."""
    from sam2refine.sam.adapter_files import check_adapter_file
    from sam2refine.sam.weights import sha256_file

    if checkpoint is not None and not Path(checkpoint).is_file():
        read_state_dict(checkpoint)  # raises its "checkpoint not found" error
    sha = sha256_file(checkpoint) if checkpoint is not None else None
    check_adapter_file(adapters, base_model_name=name, base_checkpoint_sha256=sha,
                       image_size=image_size)
    return sha


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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA > MPS > CPU for 'auto' (warning on CPU); an explicit device must exist."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES and not device.startswith("cuda:"):
        raise SAM2RefineError(f"Unknown device '{device}'; use one of {', '.join(DEVICES)}.")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        log.warning("No GPU found (CUDA or MPS): running SAM 2 on the CPU, which takes "
                    "seconds per slice (--image-size 512 is about 4x faster than 1024).")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SAM2RefineError("--device cuda was requested but no CUDA GPU is available; "
                              "use --device auto or cpu.")
    if device == "mps" and not mps_ok:
        raise SAM2RefineError("--device mps was requested but MPS is not available.")
    return torch.device(device)


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """No-grad inference, with bf16 autocast on CUDA only (CPU and MPS stay float32)."""
    with torch.inference_mode():
        if device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield
