"""Build SAM 2.1 models from the `sam2` package configs: `load_model` is the one way in."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import torch

from sam2refine.errors import SAM2RefineError
from sam2refine.runtime import resolve_device
from sam2refine.sam.adapter_files import AdapterFile, attach_adapters, read_adapter_file
from sam2refine.sam.checkpoints import load_checkpoint, read_state_dict
from sam2refine.sam.weights import get_entry, load_catalogue, resolve_checkpoint, sha256_file

log = logging.getLogger(__name__)

SUPPORTED_IMAGE_SIZES = (256, 512, 768, 1024)
_CHECKPOINT_ATTR = "sam2refine_checkpoint"  # the weights file a built model was loaded from

# Hydra overrides that the stock video predictor applies on top of the configs; the session
# uses the same so that its masks match SAM2VideoPredictor's for the same weights.
_VIDEO_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
]

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


def load_model(
    name: str = "sam2.1_hiera_tiny",
    image_size: int = 1024,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "auto",
    adapters: str | Path | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    cancel: threading.Event | None = None,
) -> torch.nn.Module:
    """The model every entry point runs: weights resolved (a local `checkpoint`, else the
    official file from the cache, downloaded and verified when missing, reporting
    `on_progress(bytes, total)`), the device chosen by the runtime policy, fine-tuned
    `adapters` checked against those weights before the model is built."""
    path = resolve_checkpoint(name, checkpoint, progress=on_progress is None, cancel=cancel,
                              on_progress=on_progress)
    return build_model(name, image_size, path, resolve_device(device), adapters=adapters)


def build_model(
    name: str = "sam2.1_hiera_tiny",
    image_size: int = 1024,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    predictor: bool = False,
    adapters: str | Path | None = None,
) -> torch.nn.Module:
    """Build a SAM 2.1 model in eval mode from exactly `checkpoint` (random init without one).

    `predictor=True` builds the stock `SAM2VideoPredictor` class (used by the benchmark).
    `adapters` is a fine-tuned adapter file (`sam2refine.sam.adapter_files`) attached on top; it
    must have been trained on exactly this checkpoint (compared by SHA-256) and image size.
    """
    import sam2  # noqa: F401  (registers the sam2 hydra config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = get_entry(name).config
    adapter_file = _checked_adapters(adapters, name, image_size, checkpoint) if adapters else None
    overrides = image_size_overrides(image_size) + _VIDEO_OVERRIDES
    if predictor:
        overrides.append("++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor")
    cfg = compose(config_name=config, overrides=overrides)
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, expected_name=name)
    setattr(model, _CHECKPOINT_ATTR, None if checkpoint is None else Path(checkpoint))
    if adapter_file is not None:
        attach_adapters(model, adapter_file)
        log.info("Adapters %s attached (%s%s)", adapters, adapter_file.info.config,
                 ", with fine-tuned mask decoder" if adapter_file.info.includes_decoder else "")
    return model.to(resolve_device(device)).eval()


def model_checkpoint(model: torch.nn.Module) -> Path | None:
    """The weights file `model` was built from (None: random initialisation)."""
    return getattr(model, _CHECKPOINT_ATTR, None)


def _checked_adapters(adapters: str | Path, name: str, image_size: int,
                      checkpoint: str | Path | None) -> AdapterFile:
    """The adapter file, read once and refused if it does not fit, before minutes of model
    loading."""
    if checkpoint is not None and not Path(checkpoint).is_file():
        read_state_dict(checkpoint)  # raises its "checkpoint not found" error
    sha = sha256_file(checkpoint) if checkpoint is not None else None
    adapter_file = read_adapter_file(adapters)
    adapter_file.check_base(name, sha, image_size)
    return adapter_file
