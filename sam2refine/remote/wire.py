"""What travels between the engine server and its client, and the errors both sides name.

Torch-free: the remote client (Slicer's remote mode) imports this without PyTorch.

- Masks (2D or 3D, bool) travel inside JSON as `{"shape", "dtype": "bool", "encoding":
  "packbits+zlib+base64", "data"}`: 1 bit per voxel, then deflate, then base64.
- Volumes (the uploaded image, the label volume) travel as an `.npz` body (`voxels`,
  `spacing`, `origin`, `direction`; every member carries its own dtype and shape in its
  `.npy` header), deflated at a fast level; loaded with `allow_pickle=False`.
- Errors travel as `{"error": message, "type": class name}` with an HTTP status by class.
"""

from __future__ import annotations

import base64
import io
import math
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from sam2refine.errors import (
    CancelledError,
    CheckpointError,
    ExportError,
    PromptError,
    SAM2RefineError,
    VolumeError,
    WeightsError,
)
from sam2refine.image.volume import Volume
from sam2refine.sam.results import ObjectInfo, SliceResult

API_VERSION = 2
MASK_ENCODING = "packbits+zlib+base64"
_VOLUME_MEMBERS = ("voxels", "spacing", "origin", "direction")


class SessionNotFoundError(SAM2RefineError):
    """The server has no such session (never opened, closed, or expired after idle time)."""


class JobNotFoundError(SAM2RefineError):
    """The server has no such propagation job in this session."""


class UploadTooLargeError(SAM2RefineError):
    """A request body (or the volume inside it) is larger than the server accepts."""


class AuthError(SAM2RefineError):
    """The request has no bearer token, or the wrong one."""


class RequestError(SAM2RefineError):
    """A request the server cannot parse (a client/server version mismatch or a bug)."""


class ServerBusyError(SAM2RefineError):
    """The server holds as many sessions as it may; close one first."""


class ServerError(SAM2RefineError):
    """The server failed unexpectedly, or cannot be reached."""


# HTTP status per error class; the most specific class in an exception's MRO wins.
ERROR_STATUS: dict[type[SAM2RefineError], int] = {
    PromptError: 422,
    VolumeError: 422,
    RequestError: 422,
    CancelledError: 409,
    SessionNotFoundError: 404,
    JobNotFoundError: 404,
    UploadTooLargeError: 413,
    AuthError: 401,
    ServerBusyError: 503,
    CheckpointError: 500,
    WeightsError: 500,
    ExportError: 500,
    ServerError: 500,
    SAM2RefineError: 400,
}
_ERRORS_BY_NAME = {cls.__name__: cls for cls in ERROR_STATUS}


def status_for(exc: SAM2RefineError) -> int:
    """The HTTP status the server answers an engine error with."""
    for cls in type(exc).__mro__:
        if cls in ERROR_STATUS:
            return ERROR_STATUS[cls]
    return 400


def error_body(exc: BaseException) -> dict[str, str]:
    """`{"error": message, "type": class name}` (what the client turns back into `exc`)."""
    return {"error": str(exc), "type": type(exc).__name__}


def error_from_body(body: object, status: int) -> SAM2RefineError:
    """The engine error a server's error answer stands for (unknown types: ServerError)."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        cls = _ERRORS_BY_NAME.get(str(body.get("type")), ServerError)
        return cls(body["error"])
    return ServerError(f"The server answered HTTP {status} without an explanation.")


# ----- masks -------------------------------------------------------------------------------
def encode_mask(mask: np.ndarray) -> dict:
    """A bool mask of any shape as JSON-ready packed bits."""
    mask = np.asarray(mask).astype(bool, copy=False)
    packed = zlib.compress(np.packbits(mask.ravel()).tobytes(), 1)
    return {"shape": list(mask.shape), "dtype": "bool", "encoding": MASK_ENCODING,
            "data": base64.b64encode(packed).decode("ascii")}


def decode_mask(payload: object, max_voxels: int = 1 << 34) -> np.ndarray:
    """Inverse of `encode_mask`; malformed payloads raise RequestError."""
    try:
        shape = tuple(int(n) for n in payload["shape"])
        if payload.get("encoding", MASK_ENCODING) != MASK_ENCODING or payload.get(
                "dtype", "bool") != "bool" or any(n < 0 for n in shape):
            raise ValueError("unsupported encoding, dtype or shape")
        count = math.prod(shape)
        if count > max_voxels:
            raise UploadTooLargeError(f"A mask of shape {shape} is larger than allowed; send a "
                                      "mask on the session's slices or image grid.")
        inflater = zlib.decompressobj()
        raw = inflater.decompress(base64.b64decode(payload["data"], validate=True),
                                  (count + 7) // 8)
        if len(raw) != (count + 7) // 8 or inflater.unconsumed_tail:
            raise ValueError(f"{len(raw)} packed bytes do not fit shape {shape}")
    except (KeyError, TypeError, ValueError, AttributeError, zlib.error) as exc:
        raise RequestError(f"Malformed mask in the request ({exc}); send masks encoded as "
                           "sam2refine.remote.wire.encode_mask does.") from exc
    bits = np.unpackbits(np.frombuffer(raw, np.uint8), count=count)
    return bits.astype(bool).reshape(shape)


# ----- volumes -----------------------------------------------------------------------------
def pack_arrays(arrays: dict[str, np.ndarray], level: int = 1) -> bytes:
    """An `.npz` of the arrays, deflated at `level` (1: fast, still ~3-5x on CT)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return out.getvalue()


def unpack_arrays(data: bytes, names: tuple[str, ...], max_bytes: int) -> dict[str, np.ndarray]:
    """The named arrays of an `.npz`, refusing pickles and members that inflate past
    `max_bytes` in all (a compressed upload must not explode in memory)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = {info.filename: info for info in zf.infolist()}
            missing = [n for n in names if f"{n}.npy" not in infos]
            if missing:
                raise RequestError(f"The upload lacks {', '.join(missing)}; send the volume as "
                                   "sam2refine.remote.wire.volume_to_bytes packs it.")
            total = sum(infos[f"{n}.npy"].file_size for n in names)
            if total > max_bytes:
                raise UploadTooLargeError(
                    f"The volume needs {total / 2**20:.0f} MiB uncompressed; this server "
                    f"accepts at most {max_bytes / 2**20:.0f} MiB. Crop the volume to the "
                    "region to segment, or restart the server with a higher limit."
                )
            arrays = {}
            for n in names:
                with zf.open(f"{n}.npy") as member:
                    arrays[n] = np.lib.format.read_array(member, allow_pickle=False)
            return arrays
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise RequestError(f"The uploaded volume is not a valid .npz archive ({exc}); send it "
                           "as sam2refine.remote.wire.volume_to_bytes packs it.") from exc


def volume_to_bytes(volume: Volume) -> bytes:
    """A volume with its geometry as an `.npz` body (bool voxels travel as uint8)."""
    voxels = volume.voxels.astype(np.uint8) if volume.voxels.dtype == bool else volume.voxels
    return pack_arrays({"voxels": np.ascontiguousarray(voxels),
                        "spacing": np.asarray(volume.spacing, np.float64),
                        "origin": np.asarray(volume.origin, np.float64),
                        "direction": np.asarray(volume.direction, np.float64)})


def volume_from_bytes(data: bytes, max_bytes: int) -> Volume:
    """Inverse of `volume_to_bytes`, checking that the voxels are real, finite numbers."""
    arrays = unpack_arrays(data, _VOLUME_MEMBERS, max_bytes)
    voxels = arrays["voxels"]
    if not (np.issubdtype(voxels.dtype, np.integer) or np.issubdtype(voxels.dtype, np.floating)
            or voxels.dtype == bool):
        raise VolumeError(f"The uploaded voxels are {voxels.dtype}; send integers or floats.")
    if np.issubdtype(voxels.dtype, np.floating) and not np.isfinite(voxels).all():
        raise VolumeError("The uploaded volume has NaN or infinite voxels; fix the image first.")
    for name in ("spacing", "origin", "direction"):
        if not (np.issubdtype(arrays[name].dtype, np.integer)
                or np.issubdtype(arrays[name].dtype, np.floating)):
            raise VolumeError(f"The uploaded {name} is {arrays[name].dtype}; send numbers.")
    try:
        return Volume(voxels, arrays["spacing"], arrays["origin"], arrays["direction"])
    except ValueError as exc:
        raise VolumeError(f"The uploaded geometry is malformed ({exc}); send 3 spacings, 3 "
                          "origin coordinates and a 3x3 direction.") from exc


def image_from_bytes(data: bytes, max_bytes: int) -> Volume:
    """An uploaded image to segment: `volume_from_bytes`, then the checks every image passes
    (`image.checks.check_image`: geometry, several slices, finite, not constant), so the
    server refuses what `segment` refuses, with the same words."""
    from sam2refine.image.checks import check_image

    volume = volume_from_bytes(data, max_bytes)
    check_image(volume, "The uploaded volume")
    return volume


# ----- results -----------------------------------------------------------------------------
def slice_result_to_json(result: SliceResult) -> dict:
    return {"obj_id": int(result.obj_id), "frame": int(result.frame),
            "object_score": float(result.object_score), "mask": encode_mask(result.mask)}


def slice_result_from_json(data: dict) -> SliceResult:
    return SliceResult(int(data["obj_id"]), int(data["frame"]), decode_mask(data["mask"]),
                       float(data["object_score"]))


def object_info_to_json(info: ObjectInfo) -> dict:
    return {"obj_id": int(info.obj_id), "name": info.name, "locked": bool(info.locked),
            "prompted_frames": [int(f) for f in info.prompted_frames],
            "tracked_frames": [int(f) for f in info.tracked_frames]}


def object_info_from_json(data: dict) -> ObjectInfo:
    return ObjectInfo(int(data["obj_id"]), str(data["name"]), bool(data["locked"]),
                      [int(f) for f in data["prompted_frames"]],
                      [int(f) for f in data["tracked_frames"]])


# ----- Auto-segment results ----------------------------------------------------------------
@dataclass
class StageLabels:
    """One stage of a remote Auto-segment: labels on the image grid ([k, j, i], values = the
    organs' object ids), the boxes it prompted with {organ: {frame: (r0, c0, r1, c1)}}, its
    clicks {organ: {frame: [(row, col, 1/0)]}} and how long it took."""

    name: str
    labels: np.ndarray
    boxes: dict[str, dict[int, tuple[int, int, int, int]]]
    seconds: float
    points: dict[str, dict[int, list[tuple[int, int, int]]]] = field(default_factory=dict)


@dataclass
class OrganPlan:
    """What SAM 2 was last given for one organ (the fields of `auto.stages.OrganPrompts`)."""

    name: str
    label: int
    frame_range: tuple[int, int]
    key_frames: list[int]
    obj_id: int
    boxes: dict[int, tuple[int, int, int, int]]
    points: dict[int, list[tuple[int, int, int]]]
    mask_frames: list[int]


@dataclass
class AutoOutcome:
    """A remote Auto-segment's answer: every stage (the proposals first), the prompts per
    organ, the prompt source's description and the organs it found nothing of."""

    stages: list[StageLabels]
    prompts: dict[str, OrganPlan]
    source: str
    skipped: list[str]

    @property
    def unet(self) -> StageLabels:
        return self.stages[0]

    @property
    def final(self) -> StageLabels:
        return self.stages[-1]


def _boxes_to_json(by_frame: dict) -> dict[str, list[int]]:
    return {str(int(f)): [int(v) for v in box] for f, box in by_frame.items()}


def _clicks_to_json(by_frame: dict) -> dict[str, list[list[int]]]:
    return {str(int(f)): [[int(v) for v in click] for click in clicks]
            for f, clicks in by_frame.items()}


def _boxes_from_json(data: dict) -> dict[int, tuple[int, int, int, int]]:
    return {int(f): tuple(int(v) for v in box) for f, box in data.items()}


def _clicks_from_json(data: dict) -> dict[int, list[tuple[int, int, int]]]:
    return {int(f): [tuple(int(v) for v in c) for c in clicks] for f, clicks in data.items()}


def auto_result_to_json(result) -> dict:  # noqa: ANN001 - an auto.pipeline.AutoResult
    """An `AutoResult` as JSON: each stage's label volume as a deflated `.npz` in base64."""
    def labels(stage) -> str:  # noqa: ANN001
        packed = pack_arrays({"labels": np.ascontiguousarray(stage.label_volume.voxels)})
        return base64.b64encode(packed).decode("ascii")

    return {
        "source": result.source, "skipped": list(result.skipped),
        "stages": [{"name": s.name, "seconds": float(s.seconds), "labels": labels(s),
                    "boxes": {o: _boxes_to_json(b) for o, b in s.boxes.items()},
                    "points": {o: _clicks_to_json(p) for o, p in s.points.items()}}
                   for s in result.stages],
        "prompts": {name: {"name": p.name, "label": int(p.label),
                           "frame_range": [int(v) for v in p.frame_range],
                           "key_frames": [int(f) for f in p.key_frames], "obj_id": int(p.obj_id),
                           "boxes": _boxes_to_json(p.boxes), "points": _clicks_to_json(p.points),
                           "mask_frames": [int(f) for f in p.mask_frames]}
                    for name, p in result.prompts.items()},
    }


def auto_result_from_json(data: dict, max_bytes: int = 1 << 34) -> AutoOutcome:
    """Inverse of `auto_result_to_json` (torch-free: what the client gets back)."""
    try:
        stages = []
        for s in data["stages"]:
            raw = base64.b64decode(s["labels"], validate=True)
            stages.append(StageLabels(
                str(s["name"]), unpack_arrays(raw, ("labels",), max_bytes)["labels"],
                {o: _boxes_from_json(b) for o, b in s["boxes"].items()}, float(s["seconds"]),
                {o: _clicks_from_json(p) for o, p in s["points"].items()}))
        prompts = {name: OrganPlan(
            str(p["name"]), int(p["label"]), (int(p["frame_range"][0]), int(p["frame_range"][1])),
            [int(f) for f in p["key_frames"]], int(p["obj_id"]), _boxes_from_json(p["boxes"]),
            _clicks_from_json(p["points"]), [int(f) for f in p["mask_frames"]])
            for name, p in data["prompts"].items()}
        return AutoOutcome(stages, prompts, str(data["source"]), [str(s) for s in data["skipped"]])
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RequestError(f"Malformed Auto-segment answer from the server ({exc}); check that "
                           "the client and server versions match.") from exc
