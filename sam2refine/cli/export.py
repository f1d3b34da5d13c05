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
                     help=".seg.nrrd, or a label map (NIfTI, NRRD) named by a labels.json / "
                          "<name>.labels.json next to it or by --label-names")
    exp.add_argument("--format", choices=EXPORT_FORMATS,
                     help="default: from --out (.dcm: dicom-seg, .seg.nrrd, .nii/.nii.gz)")
    exp.add_argument("--reference-series", metavar="DIR",
                     help="DICOM folder of the images the segmentation was made on (default: "
                          "the series `segment` recorded in SEG)")
    exp.add_argument("--series", metavar="UID",
                     help="SeriesInstanceUID of the reference series when its folder holds "
                          "several (default: the one `segment` recorded in SEG)")
    exp.add_argument("--label-names", metavar="JSON",
                     help="segment names by label value: labels.json ({\"1\": \"liver\"}), an "
                          "nnU-Net dataset.json or a .labels.json")
    exp.add_argument("--out", required=True, help="output file, e.g. seg.dcm")
    exp.add_argument("--algorithm-type", choices=("AUTOMATIC", "SEMIAUTOMATIC"),
                     help="DICOM-SEG algorithm type (default: as recorded, else SEMIAUTOMATIC)")
    exp.add_argument("--series-description", default="SAM2Refine segmentation",
                     help="DICOM-SEG series description")
    exp.set_defaults(run=_export)


def _format(out: Path, given: str | None) -> str:
    from sam2refine.errors import ExportError

    name = out.name.lower()
    fmt = given or ("seg.nrrd" if name.endswith(".seg.nrrd") else
                    "nifti" if name.endswith((".nii", ".nii.gz")) else
                    "dicom-seg" if name.endswith(".dcm") or "." not in name else None)
    if fmt is None:
        raise ExportError(f"Cannot tell the format from {out.name}: end it in .dcm (DICOM-SEG), "
                          ".seg.nrrd or .nii.gz, or give --format.")
    suffixes = {"seg.nrrd": (".seg.nrrd",), "nifti": (".nii", ".nii.gz")}.get(fmt)
    if suffixes and not name.endswith(suffixes):
        raise ExportError(f"Output {out} must end in {' or '.join(suffixes)} for --format {fmt}.")
    return fmt


def _reference(args: argparse.Namespace, fields: dict[str, str]) -> str:
    from sam2refine.errors import ExportError

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
    return reference


def _export(args: argparse.Namespace) -> int:
    from sam2refine.cli.outputs import check_outputs, segmentation_outputs
    from sam2refine.io.label_names import sidecar_path
    from sam2refine.io.segmentation import read_segmentation_file, write_segmentation
    from sam2refine.io.segments import empty_note

    out = Path(args.out)
    fmt = _format(out, args.format)
    source = Path(args.segmentation).expanduser()
    outputs = [out] if fmt == "dicom-seg" else segmentation_outputs(out)
    names_file = sidecar_path(source) if not args.label_names else None
    check_outputs(outputs, [source, args.label_names, names_file, args.reference_series])
    segmentation = read_segmentation_file(source, names=args.label_names)
    fields = dict(segmentation.fields)
    algorithm_type = (args.algorithm_type or fields.get("SAM2Refine_AlgorithmType")
                      or "SEMIAUTOMATIC")
    segments = segmentation.segments
    kept = segmentation.present()
    if fmt == "dicom-seg":
        from sam2refine.io.dicomseg import export_dicom_seg

        reference = _reference(args, fields)
        check_outputs(outputs, [reference])
        # the series it was made on, even from a moved folder; --series overrides it
        series_uid = args.series or fields.get("SAM2Refine_SourceSeriesInstanceUID")
        written = export_dicom_seg(segmentation.layers, segments, reference, out,
                                   algorithm_type=algorithm_type,
                                   series_description=args.series_description,
                                   series_uid=series_uid)
        note = f"{len(kept)} segment(s){empty_note(kept, segments)}"
    else:
        fields["SAM2Refine_AlgorithmType"] = algorithm_type
        written = write_segmentation(out, segmentation.layers, segments, fields=fields,
                                     extent_offset=segmentation.extent_offset)
        empty = len(segments) - len(kept)
        note = f"{len(segments)} segment(s)" + (f", {empty} of them empty" if empty else "")
    log.info("Wrote %s (%s, %s)", written, fmt, note)
    return 0
