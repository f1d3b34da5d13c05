"""`sam2refine segment`: segment a volume from a prompts JSON file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from sam2refine.cli.options import add_model_arguments, model_from_arguments
from sam2refine.cli.outputs import check_output_suffix, check_outputs, segmentation_outputs

log = logging.getLogger("sam2refine")


def register(sub: argparse._SubParsersAction) -> None:
    from sam2refine.image.slicing import AXES

    seg = sub.add_parser("segment", help="segment a volume from a prompts JSON file")
    seg.add_argument("volume", help="NIfTI, NRRD, MHA/MHD file or DICOM series folder")
    seg.add_argument("--prompts", required=True, help="prompts JSON (see README)")
    seg.add_argument("--out", required=True, help="output .seg.nrrd or .nii/.nii.gz")
    seg.add_argument("--series", metavar="UID",
                     help="SeriesInstanceUID of the series to segment, when the DICOM folder "
                          "holds several (they are listed if it is missing)")
    add_model_arguments(seg)
    seg.add_argument("--axis", default="axial", choices=AXES)
    seg.add_argument("--intensity", default="ct",
                     help="ct (abdomen window), ct-<window> (lung, bone, brain, liver, "
                          "mediastinum) or mr (percentile normalisation)")
    seg.set_defaults(run=_segment)


def source_fields(volume_path: str | Path, series_uid: str | None, algorithm_type: str
                  ) -> dict[str, str]:
    """The header fields that let `export` find and reference the images later."""
    fields = {"SAM2Refine_AlgorithmType": algorithm_type}
    if Path(volume_path).is_dir():
        fields["SAM2Refine_SourceSeries"] = str(Path(volume_path).expanduser().resolve())
        if series_uid:
            fields["SAM2Refine_SourceSeriesInstanceUID"] = series_uid
    return fields


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam2refine.image.reading import load_image
    from sam2refine.image.slicing import slice_stack
    from sam2refine.io.colors import default_color
    from sam2refine.io.segmentation import SegmentInfo, write_segmentation
    from sam2refine.io.terminology import slicer_terminology
    from sam2refine.sam.prompts_file import (
        apply_prompts,
        check_against,
        propagation_groups,
        read_prompts,
    )
    from sam2refine.sam.session import Session

    out = Path(args.out)
    check_output_suffix(out)
    prompts = read_prompts(args.prompts)
    check_outputs(segmentation_outputs(out), [args.volume, args.prompts, *prompts.mask_files(),
                                              args.checkpoint, args.adapters])
    volume, series_uid = load_image(args.volume, series=args.series)
    check_against(prompts, volume, slice_stack(volume, args.axis).num_frames)  # before the model
    model = model_from_arguments(args)
    session = Session(model, volume, axis=args.axis, intensity=args.intensity)
    log.info("Volume %s: %d %s slices; model %s at %d px on %s", args.volume,
             session.num_frames, args.axis, args.model, args.image_size, session.device)
    ids = apply_prompts(session, prompts)
    with tqdm(total=0, desc="propagating (slices x segments)", unit="step") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()
        for objects, frame_range in propagation_groups(ids, prompts):
            session.propagate(objects, frame_range=frame_range, progress=progress)
    segments = [SegmentInfo(seg.name, obj_id, seg.color or default_color(index, seg.name),
                            slicer_terminology(seg.name))
                for index, (obj_id, seg) in enumerate(zip(ids, prompts.segments))]
    fields = source_fields(args.volume, series_uid, "SEMIAUTOMATIC")  # a person prompted
    written = write_segmentation(out, session.label_volume(), segments, fields=fields)
    log.info("Wrote %s (%d segments)", written, len(segments))
    return 0
