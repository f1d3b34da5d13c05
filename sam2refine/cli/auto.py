"""`sam2refine auto`: automatic segmentation of a volume, or of every volume in a folder.

A prompt source (our U-Net checkpoint, or an existing label file such as a TotalSegmentator
or nnU-Net output) proposes the organs; SAM 2 refines them in one or two stages.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sam2refine")
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def register(subparsers: argparse._SubParsersAction) -> None:
    from sam2refine.cli.options import add_model_arguments
    from sam2refine.cli.values import non_negative_int

    auto = subparsers.add_parser(
        "auto", help="segment organs automatically (prompt source + SAM 2 refinement)")
    auto.add_argument("volume", metavar="VOLUME|FOLDER",
                      help="an image file or DICOM series folder, or a folder of image files")
    auto.add_argument("--out", required=True, metavar="SEG.seg.nrrd|OUT_DIR",
                      help="output .seg.nrrd or .nii/.nii.gz; a folder for a folder of volumes")
    source = auto.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-generator", metavar="CKPT",
                        help="U-Net prompt generator checkpoint")
    source.add_argument("--prompts-from", metavar="LABELS",
                        help="label file (NIfTI, NRRD, .seg.nrrd) whose labels seed SAM 2; for "
                             "a folder of volumes, a folder of label files with the same names")
    auto.add_argument("--series", metavar="UID",
                      help="SeriesInstanceUID of the series to segment, when the DICOM folder "
                           "holds several")
    auto.add_argument("--label-names", metavar="JSON",
                      help="names of the labels (labels.json or nnU-Net dataset.json); default: "
                           "the .seg.nrrd's segment names or a names file next to the labels")
    auto.add_argument("--organs", help="comma-separated organ names (default: all proposed)")
    auto.add_argument("--save-prompts", metavar="PROMPTS.json",
                      help="write the final prompts (replay with `segment --prompts`); a "
                           "folder for a folder of volumes")
    auto.add_argument("--keep-stages", action="store_true",
                      help="also write the proposals and stage 1 as <out>.unet / <out>.stage1")
    auto.add_argument("--stages", type=int, default=2, choices=(1, 2))
    auto.add_argument("--margin", type=non_negative_int, default=3,
                      help="slices beyond each organ's proposed extent SAM 2 may fill")
    add_model_arguments(auto)
    auto.add_argument("--intensity", default="ct", help="ct, ct-<window> or mr (see segment)")
    auto.set_defaults(run=_auto)


def _auto(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam2refine.cli.options import model_from_arguments

    jobs = _jobs(args)
    _check_jobs(args, jobs)
    model = model_from_arguments(args)
    device = next(model.parameters()).device
    source = None
    if args.prompt_generator:
        from sam2refine.auto.sources import UNetPromptSource

        source = UNetPromptSource(args.prompt_generator, str(device))
    for volume_path, labels, out, prompts_out in tqdm(jobs, desc="volumes", unit="volume",
                                                      disable=len(jobs) == 1):
        _one(args, model, source or labels, volume_path, out, prompts_out)
    return 0


def _jobs(args: argparse.Namespace) -> list[tuple[Path, Path | None, Path, Path | None]]:
    """(volume, label file, output, prompts output) for one volume or each in a folder."""
    from sam2refine.cli.outputs import check_output_suffix
    from sam2refine.errors import SAM2RefineError

    volume, out = Path(args.volume), Path(args.out)
    labels = Path(args.prompts_from) if args.prompts_from else None
    for given, what in ((volume, "Volume"), (labels, "Label file")):
        if given is not None and not given.exists():  # before minutes of model loading
            raise SAM2RefineError(f"{what} not found: {given}. Check the path.")
    save = Path(args.save_prompts) if args.save_prompts else None
    if volume.is_dir() and not any(volume.iterdir()):
        raise SAM2RefineError(f"{volume} is an empty folder; give a volume file, a DICOM series "
                              "folder or a folder of volume files.")
    files = sorted(p for p in volume.iterdir() if _is_volume_file(p)) if volume.is_dir() else []
    if not files:  # a file, or a DICOM series folder
        check_output_suffix(out)
        return [(volume, labels, out, save)]
    if out.name.lower().endswith((".seg.nrrd", ".nii", ".nii.gz")):
        raise SAM2RefineError(f"{volume} is a folder of volumes: --out must be a folder.")
    if labels is not None and not labels.is_dir():
        raise SAM2RefineError(f"{volume} is a folder of volumes: --prompts-from must be a folder "
                              "of label files named like the volumes.")
    jobs = []
    for path in files:
        case = _case_name(path)
        label = _label_for(labels, case) if labels is not None else None
        jobs.append((path, label, out / f"{case}.seg.nrrd",
                     save / f"{case}.prompts.json" if save else None))
    return jobs


def _check_jobs(args: argparse.Namespace, jobs: list) -> None:
    """No output of any job may overwrite an input of any job (or another output)."""
    from sam2refine.cli.outputs import check_outputs, segmentation_outputs
    from sam2refine.io.label_names import sidecar_path

    outputs: list[Path] = []
    inputs: list[Path | str | None] = [args.label_names, args.prompt_generator,
                                       args.checkpoint, args.adapters]
    for volume_path, labels, out, prompts_out in jobs:
        inputs += [volume_path, labels]
        if labels is not None and not args.label_names:  # the names file read beside it
            inputs.append(sidecar_path(labels))
        outputs += segmentation_outputs(out)
        if args.keep_stages:
            for stage in ("unet", "stage1"):
                outputs += segmentation_outputs(_stage_path(out, stage))
        if prompts_out is not None:
            proposals = prompts_out.with_name(
                f"{prompts_out.name.removesuffix('.json')}.proposals.nii.gz")
            outputs += [prompts_out, *segmentation_outputs(proposals)]
    check_outputs(outputs, inputs)


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return path.is_file() and name.endswith(VOLUME_SUFFIXES) and not name.endswith(".seg.nrrd")


def _case_name(path: Path) -> str:
    """A volume's case name: its file name without suffix and nnU-Net's `_0000` channel tag."""
    name = path.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name[:-5] if name.endswith("_0000") else name


def _label_for(folder: Path, case: str) -> Path:
    from sam2refine.errors import PromptGeneratorError

    for path in sorted(folder.iterdir()):
        if path.is_file() and _case_name(path) == case:
            return path
    raise PromptGeneratorError(f"No label file for case '{case}' in {folder} (expected e.g. "
                               f"{case}.nii.gz).")


def _one(args, model, source, volume_path: Path, out: Path, prompts_out: Path | None) -> None:
    from sam2refine.auto.pipeline import auto_segment, save_prompts
    from sam2refine.auto.sources import LabelFilePromptSource
    from sam2refine.cli.segment import source_fields
    from sam2refine.image.reading import load_image
    from sam2refine.io.segmentation import write_segmentation

    volume, series_uid = load_image(volume_path, series=args.series)
    if isinstance(source, Path):
        source = LabelFilePromptSource(source, args.label_names)
    organs = [o.strip() for o in args.organs.split(",") if o.strip()] if args.organs else None
    result = auto_segment(model, volume, source, organs=organs, stages=args.stages,
                          margin=args.margin, intensity=args.intensity)
    fields = source_fields(volume_path, series_uid, "AUTOMATIC")  # no person prompted
    out.parent.mkdir(parents=True, exist_ok=True)
    segments = result.segments()
    written = write_segmentation(out, result.final.label_volume, segments, fields=fields)
    if args.keep_stages:
        for stage in result.stages[:-1]:
            write_segmentation(_stage_path(out, stage.name), stage.label_volume, segments,
                               fields=fields)
    if prompts_out is not None:
        prompts_out.parent.mkdir(parents=True, exist_ok=True)
        save_prompts(result, prompts_out)
    times = ", ".join(f"{s.name} {s.seconds:.1f} s" for s in result.stages)
    log.info("Wrote %s (%d organs from %s; %s)", written, len(segments), result.source, times)
    if result.skipped:
        log.info("Not on this image: %s", ", ".join(result.skipped))


def _stage_path(out: Path, stage: str) -> Path:
    name = out.name
    for suffix in (".seg.nrrd", ".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return out.with_name(f"{name[: -len(suffix)]}.{stage}{name[-len(suffix):]}")
    return out.with_name(f"{name}.{stage}")
