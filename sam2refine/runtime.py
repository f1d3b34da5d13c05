"""The one runtime policy: which device the engine runs on, under which autocast, and how the
processes of a torchrun job find each other. Inference, U-Net training and fine-tuning all
ask here, so they agree."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sam2refine.errors import SAM2RefineError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "mps", "cpu")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """CUDA > MPS > CPU for 'auto' (one warning per process on CPU); an explicit device must
    exist. Inside a torchrun job a CUDA device becomes this process's own GPU (LOCAL_RANK)."""
    if isinstance(device, torch.device):
        return device
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise SAM2RefineError(f"Unknown device '{device}'; use one of {', '.join(DEVICES)}.")
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps and mps.is_available())
    if device == "auto":
        if torch.cuda.is_available():
            return _local_cuda(torch.device("cuda"))
        if mps_ok:
            return torch.device("mps")
        _warn_cpu_once()
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SAM2RefineError("--device cuda was requested but no CUDA GPU is available; "
                              "use --device auto or cpu.")
    if device == "mps" and not mps_ok:
        raise SAM2RefineError("--device mps was requested but MPS is not available.")
    return _local_cuda(torch.device(device)) if device == "cuda" else torch.device(device)


@functools.cache
def _warn_cpu_once() -> None:
    log.warning("No GPU found (CUDA or MPS): running on the CPU, where SAM 2 takes seconds per "
                "slice (--image-size 512 is about 4x faster than 1024).")


def _local_cuda(device: torch.device) -> torch.device:
    """cuda -> cuda:LOCAL_RANK under torchrun (one GPU per process), else unchanged."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or device.index is not None:
        return device
    local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    torch.cuda.set_device(local)
    return local


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The reduced precision autocast runs in on `device`; None for float32.

    bf16 on CUDA (fp16 on GPUs without bf16); CPU and MPS run float32.
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast under the policy of `autocast_dtype` (a no-op where it says float32)."""
    dtype = autocast_dtype(device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def inference_context(device: torch.device) -> Iterator[None]:
    """No-grad inference under the autocast policy."""
    with torch.inference_mode(), autocast(device):
        yield


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int
    world_size: int
    device: torch.device
    started: bool  # whether start_distributed created the process group (and must end it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(device: str | torch.device = "auto") -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1 (NCCL on CUDA, gloo elsewhere)."""
    import torch.distributed as dist

    chosen = resolve_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(0, 1, chosen, False)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), chosen, started)


def stop_distributed(run: Distributed) -> None:
    """End the process group if `start_distributed` began it."""
    import torch.distributed as dist

    if run.started and dist.is_initialized():
        dist.destroy_process_group()
