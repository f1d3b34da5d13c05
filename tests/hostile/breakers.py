"""Ways to break a good input file, as users and their tools do."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sam2refine.image.volume import Volume


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garbage(path: Path, data: bytes = b"\x00garbage, not an image\xff" * 8) -> None:
    path.write_bytes(data)


def empty(path: Path) -> None:
    path.write_bytes(b"")


def image(path: Path, voxels: np.ndarray, spacing=(0.8, 1.2, 3.0), vector: bool = False) -> None:
    img = sitk.GetImageFromArray(voxels, isVector=vector)
    if img.GetDimension() == 3:
        img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith(".gz"))


def float_ct(path: Path, bad: float) -> None:
    voxels = np.random.default_rng(0).normal(0, 100, (12, 40, 48)).astype(np.float32)
    voxels[5, 20, 20] = bad
    image(path, voxels)


def nrrd_header(path: Path, directions: str, sizes: str = "8 8 4") -> None:
    """A raw NRRD with a hand-written geometry (zero spacing, zero direction ...)."""
    count = int(np.prod([int(v) for v in sizes.split()]))
    voxels = np.arange(count, dtype=np.int16)
    header = ("NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
              f"sizes: {sizes}\nspace directions: {directions}\nkinds: domain domain domain\n"
              "endian: little\nencoding: raw\nspace origin: (0,0,0)\n\n")
    path.write_bytes(header.encode() + voxels.tobytes())


def json_file(path: Path, data: object) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def prompts(path: Path, segment: dict | None = None, **top: object) -> None:
    """A prompts file whose one segment (or top level) carries the hostile value."""
    seg = {"name": "liver", "points": [{"position": [18, 20, 6]}]}
    seg.update(segment or {})
    json_file(path, {"segments": [seg], **top})


def link(target: Path, name: Path, hard: bool = False) -> None:
    name.unlink(missing_ok=True)
    if hard:
        os.link(target, name)
    else:
        name.symlink_to(target)


def dicom_drop(folder: Path, index: int = 5) -> None:
    sorted(folder.glob("img_*.dcm"))[index].unlink()


def dicom_truncate(folder: Path, index: int = 5) -> None:
    truncate(sorted(folder.glob("img_*.dcm"))[index], 0.5)


def dicom_duplicate(folder: Path) -> None:
    """A second copy of one slice with a new SOPInstanceUID (a duplicated export)."""
    import pydicom
    from pydicom.uid import generate_uid

    first = sorted(folder.glob("img_*.dcm"))[3]
    ds = pydicom.dcmread(first)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / "copy_of_slice.dcm", enforce_file_format=True)


def pickle_bomb(path: Path) -> None:
    """A checkpoint whose unpickling would run code (os.system) if loaded unsafely."""
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned > /tmp/sam2refine-pwned",))

    with zipfile.ZipFile(path, "w") as zf:  # torch.save's zip layout, holding the exploit
        zf.writestr("archive/data.pkl", pickle.dumps({"model": Exploit()}))
        zf.writestr("archive/version", "3\n")


def gz_garbage(path: Path) -> None:
    path.write_bytes(gzip.compress(b"this is not a NIfTI header at all" * 20))


def copy(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)


def phantom_volume(path: Path, volume: Volume) -> None:
    sitk.WriteImage(volume.to_sitk(), str(path), useCompression=str(path).endswith(".gz"))
