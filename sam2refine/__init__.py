"""SAM2Refine engine: SAM 2 segmentation of CT/MR volumes, without Slicer.

The names below are the public API; each is imported on first use (PEP 562), so
`import sam2refine` is cheap and does not import torch (the client and the Slicer module rely
on that). Everything else lives in the rooms: image, io, sam, auto, promptgen, finetune,
datasets, remote, cli (see docs/architecture.md).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from sam2refine.version import __version__

_EXPORTS = {
    # volumes and their slices
    "Volume": "sam2refine.image.volume",
    "load_volume": "sam2refine.image.reading",
    "slice_stack": "sam2refine.image.slicing",
    # SAM 2
    "load_model": "sam2refine.sam.model",
    "build_model": "sam2refine.sam.model",
    "Session": "sam2refine.sam.session",
    "SessionLike": "sam2refine.sam.protocol",
    "SliceResult": "sam2refine.sam.results",
    "ObjectInfo": "sam2refine.sam.results",
    "weights_catalogue": "sam2refine.sam.weights",
    "download_weights": "sam2refine.sam.weights",
    "cache_dir": "sam2refine.sam.weights",
    # files
    "SegmentInfo": "sam2refine.io.segmentation",
    "write_segmentation": "sam2refine.io.segmentation",
    "read_segmentation": "sam2refine.io.segmentation",
    "read_segmentation_file": "sam2refine.io.segmentation",
    "Segmentation": "sam2refine.io.segmentation",
    "export_dicom_seg": "sam2refine.io.dicomseg",
    "atomic_write": "sam2refine.io.atomic",
    "default_color": "sam2refine.io.colors",
    "organ_key": "sam2refine.io.organ_names",
    "slicer_terminology": "sam2refine.io.terminology",
    "write_nifti_labelmap": "sam2refine.io.segmentation",
    "read_label_names": "sam2refine.io.label_names",
    "sidecar_names": "sam2refine.io.label_names",
    # automatic segmentation
    "auto_segment": "sam2refine.auto.pipeline",
    # the engine in another process
    "Client": "sam2refine.remote.client",
    "RemoteSession": "sam2refine.remote.client",
    "ServerError": "sam2refine.remote.wire",
    "SessionNotFoundError": "sam2refine.remote.wire",
    # ... driven from a UI thread: a child engine process, jobs polled with short requests
    "LocalEngine": "sam2refine.remote.local_engine",
    "EngineSettings": "sam2refine.remote.local_engine",
    "EngineStoppedError": "sam2refine.remote.local_engine",
    "engine_code_folder": "sam2refine.remote.local_engine",
    "SessionJobs": "sam2refine.remote.stepwise",
    "Upload": "sam2refine.remote.stepwise",
    "volume_chunks": "sam2refine.remote.stepwise",
    "file_chunks": "sam2refine.remote.stepwise",
    "open_session_job": "sam2refine.remote.stepwise",
    "check_server": "sam2refine.remote.stepwise",
    # errors
    "SAM2RefineError": "sam2refine.errors",
    "VolumeError": "sam2refine.errors",
    "PromptError": "sam2refine.errors",
    "CheckpointError": "sam2refine.errors",
    "WeightsError": "sam2refine.errors",
    "ExportError": "sam2refine.errors",
    "CancelledError": "sam2refine.errors",
    "DatasetError": "sam2refine.errors",
    "PromptGeneratorError": "sam2refine.errors",
    "AdapterError": "sam2refine.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sam2refine' has no attribute {name!r}")
    # Not cached here: the name always follows its module (so patching the module patches it).
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from sam2refine.auto.pipeline import auto_segment
    from sam2refine.errors import (
        AdapterError,
        CancelledError,
        CheckpointError,
        DatasetError,
        ExportError,
        PromptError,
        PromptGeneratorError,
        SAM2RefineError,
        VolumeError,
        WeightsError,
    )
    from sam2refine.image.reading import load_volume
    from sam2refine.image.slicing import slice_stack
    from sam2refine.image.volume import Volume
    from sam2refine.io.atomic import atomic_write
    from sam2refine.io.colors import default_color
    from sam2refine.io.dicomseg import export_dicom_seg
    from sam2refine.io.label_names import read_label_names, sidecar_names
    from sam2refine.io.organ_names import organ_key
    from sam2refine.io.segmentation import (
        Segmentation,
        SegmentInfo,
        read_segmentation,
        read_segmentation_file,
        write_nifti_labelmap,
        write_segmentation,
    )
    from sam2refine.io.terminology import slicer_terminology
    from sam2refine.remote.client import Client, RemoteSession
    from sam2refine.remote.local_engine import (
        EngineSettings,
        EngineStoppedError,
        LocalEngine,
        engine_code_folder,
    )
    from sam2refine.remote.stepwise import (
        SessionJobs,
        Upload,
        check_server,
        file_chunks,
        open_session_job,
        volume_chunks,
    )
    from sam2refine.remote.wire import ServerError, SessionNotFoundError
    from sam2refine.sam.model import build_model, load_model
    from sam2refine.sam.protocol import SessionLike
    from sam2refine.sam.results import ObjectInfo, SliceResult
    from sam2refine.sam.session import Session
    from sam2refine.sam.weights import cache_dir, download_weights, weights_catalogue
