"""On the shared real CT and DICOM data: prompts from real labels go through the session and
the export, and the read-back segmentation sits on the same physical voxels as the labels —
including the DICOM labels whose y axis is flipped against their series."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sam2refine.errors import PromptError
from sam2refine.image.labels import load_label_volume, resample_to
from sam2refine.image.reading import load_volume
from sam2refine.image.volume import Volume
from sam2refine.io.segmentation import SegmentInfo, read_seg_nrrd, write_seg_nrrd
from sam2refine.sam.session import Session

LIVER, SPLEEN = 5, 1
def _largest_slice(session: Session, mask: np.ndarray) -> int:
    frames = session.stack.frames(mask)
    return int(frames.reshape(len(frames), -1).sum(1).argmax())


def _round_trip(tiny_model, image: Volume, label_path, tmp_path) -> None:
    """Exact mask prompt of the liver on its largest slice -> .seg.nrrd -> read back ->
    compared with the original label file on the original label file's own grid."""
    labels = load_label_volume(label_path, image)
    session = Session(tiny_model, image)
    liver = session.add_object("liver", LIVER)
    frame = _largest_slice(session, labels.voxels == LIVER)
    session.set_mask(liver, frame, session.stack.frames(labels.voxels == LIVER)[frame], "exact")
    out = write_seg_nrrd(tmp_path / "liver.seg.nrrd", session.label_volume(),
                         [SegmentInfo("liver", LIVER, (0.9, 0.5, 0.4))])
    back, segments = read_seg_nrrd(out)
    assert back.same_geometry(image)
    assert [(s.name, s.label) for s in segments] == [("liver", LIVER)]

    original = Volume.from_sitk(sitk.ReadImage(str(label_path)))
    on_original_grid = resample_to(back, original).voxels == LIVER
    prompted = np.zeros(session.stack.frames(image.voxels).shape, bool)
    prompted[frame] = True
    prompted = resample_to(image.with_voxels(session.stack.to_volume(prompted).astype(np.uint8)),
                           original).voxels.astype(bool)
    truth = (original.voxels == LIVER) & prompted
    assert truth.sum() > 500
    np.testing.assert_array_equal(on_original_grid, truth)


def test_dicom_series_with_flipped_labels_round_trip(tiny_model, totalseg_dir, tmp_path):
    image = load_volume(totalseg_dir / "example_ct_dicom")
    _round_trip(tiny_model, image, totalseg_dir / "example_seg_dicom.nii.gz", tmp_path)


def test_nifti_ct_round_trip(tiny_model, totalseg_dir, tmp_path):
    image = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    _round_trip(tiny_model, image, totalseg_dir / "example_seg.nii.gz", tmp_path)


def test_box_from_real_labels_propagates_over_its_range(tiny_model, totalseg_dir):
    image = load_volume(totalseg_dir / "example_ct_sm.nii.gz")
    labels = load_label_volume(totalseg_dir / "example_seg.nii.gz", image)
    session = Session(tiny_model, image)
    spleen = session.add_object("spleen", SPLEEN)
    mask = labels.voxels == SPLEEN
    frame = _largest_slice(session, mask)
    rows, cols = np.nonzero(session.stack.frames(mask)[frame])
    corners = session.stack.frc_to_ijk(
        np.array([[frame, rows.min(), cols.min()], [frame, rows.max(), cols.max()]]))
    result = session.set_box(spleen, *corners)
    assert result.frame == frame
    ran = session.propagate(frame_range=(frame - 2, frame + 2))
    assert ran == 4
    covered = set(session.object(spleen).tracked) | set(session.object(spleen).cond)
    assert covered == set(range(frame - 2, frame + 3))
    with pytest.raises(PromptError, match="outside the volume"):
        session.add_points(spleen, [[500, 10, frame]], [1])
