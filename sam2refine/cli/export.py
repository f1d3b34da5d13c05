"""`sam2refine export`: a segmentation to DICOM-SEG, .seg.nrrd or NIfTI."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sam2refine")
EXPORT_FORMATS = ("dicom-seg", "seg.nrrd", "nifti")


def register(subparsers: argparse._SubParsersAction) -> None:
    exp = subparsers.add_parser("export",
                                help="convert a segmentation to DICOM-SEG, .seg.nrrd or NIfTI")
    exp.add_argument("segmentation", metavar="SEG",
                     help=".seg.nrrd, or NIfTI labelmap (names from its .labels.json if present)")
    exp.add_argument("--format", choices=EXPORT_FORMATS,
                     help="default: from --out (.dcm: dicom-seg, .seg.nrrd, .nii/.nii.gz)")
    exp.add_argument("--reference-series", metavar="DIR",
                     help="DICOM folder of the images the segmentation was made on (default: "
                          "the series `segment` recorded in SEG)")
    exp.add_argument("--out", required=True, help="output file, e.g. seg.dcm")
    exp.add_argument("--algorithm-type", choices=("AUTOMATIC", "SEMIAUTOMATIC"),
                     help="DICOM-SEG algorithm type (default: as recorded, else SEMIAUTOMATIC)")
    exp.add_argument("--series-description", default="SAM2Refine segmentation",
                     help="DICOM-SEG series description")
    exp.set_defaults(run=_export)


def _export(args: argparse.Namespace) -> int:
    from sam2refine.errors import ExportError

    out = Path(args.out)
    name = out.name.lower()
    fmt = args.format or ("seg.nrrd" if name.endswith(".seg.nrrd") else
                          "nifti" if name.endswith((".nii", ".nii.gz")) else
                          "dicom-seg" if name.endswith(".dcm") or "." not in name else None)
    if fmt is None:
        raise ExportError(f"Cannot tell the format from {out.name}: end it in .dcm (DICOM-SEG), "
                          ".seg.nrrd or .nii.gz, or give --format.")
    suffixes = {"seg.nrrd": (".seg.nrrd",), "nifti": (".nii", ".nii.gz")}.get(fmt)
    if suffixes and not name.endswith(suffixes):
        raise ExportError(f"Output {out} must end in {' or '.join(suffixes)} for --format {fmt}.")
    from sam2refine.io.segmentation import read_segmentation

    labelmap, segments, fields = read_segmentation(Path(args.segmentation))
    algorithm_type = (args.algorithm_type or fields.get("SAM2Refine_AlgorithmType")
                      or "SEMIAUTOMATIC")
    if fmt == "dicom-seg":
        from sam2refine.io.dicomseg import export_dicom_seg

        reference = args.reference_series or fields.get("SAM2Refine_SourceSeries")
        if not reference:
            raise ExportError(
                f"{args.segmentation} was not made on a DICOM series (none is recorded in it), so "
                "a DICOM-SEG has no images to reference: add --reference-series DIR, the DICOM "
                "folder of the images it was made on."
            )
        if not args.reference_series and not Path(reference).is_dir():
            raise ExportError(
                f"{args.segmentation} was made on the DICOM series in {reference}, which is no "
                "longer there: give its current location with --reference-series DIR."
            )
        written = export_dicom_seg(labelmap, segments, reference, out,
                                   algorithm_type=algorithm_type,
                                   series_description=args.series_description)
    elif fmt == "seg.nrrd":
        from sam2refine.io.segmentation import write_seg_nrrd

        fields["SAM2Refine_AlgorithmType"] = algorithm_type
        written = write_seg_nrrd(out, labelmap, segments, fields=fields)
    else:
        from sam2refine.io.segmentation import write_nifti_labelmap

        written = write_nifti_labelmap(out, labelmap, segments)
    log.info("Wrote %s (%s, %d segments)", written, fmt, len(segments))
    return 0
