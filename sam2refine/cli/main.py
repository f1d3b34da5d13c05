"""`sam2refine` command line: segment a volume from prompts, export, manage weights."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from pathlib import Path

from sam2refine.errors import SAM2RefineError

log = logging.getLogger("sam2refine")
# Further commands, each a module with `register(subparsers)` (keeps this file small).
_COMMAND_MODULES = ("sam2refine.cli.export", "sam2refine.cli.serve", "sam2refine.cli.auto",
                    "sam2refine.cli.data", "sam2refine.cli.evaluate",
                    "sam2refine.cli.finetune", "sam2refine.cli.promptgen")


def main(argv: list[str] | None = None) -> int:
    """Entry point; errors become one line on stderr and exit status 2, never a traceback."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.run(args)
    except SAM2RefineError as exc:
        print(f"sam2refine: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sam2refine: interrupted; nothing was written.", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from sam2refine.image.slicing import AXES
    from sam2refine.runtime import DEVICES
    from sam2refine.sam.model import SUPPORTED_IMAGE_SIZES

    parser = argparse.ArgumentParser(prog="sam2refine", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    seg = sub.add_parser("segment", help="segment a volume from a prompts JSON file")
    seg.add_argument("volume", help="NIfTI, NRRD, MHA/MHD file or DICOM series folder")
    seg.add_argument("--prompts", required=True, help="prompts JSON (see README)")
    seg.add_argument("--out", required=True, help="output .seg.nrrd or .nii/.nii.gz")
    seg.add_argument("--model", default="sam2.1_hiera_tiny")
    seg.add_argument("--checkpoint", help="local checkpoint; default: download official weights")
    seg.add_argument("--adapters", metavar="FILE",
                     help="fine-tuned adapters (.safetensors) trained on this model/checkpoint")
    seg.add_argument("--image-size", type=int, default=1024, choices=SUPPORTED_IMAGE_SIZES)
    seg.add_argument("--device", default="auto", choices=DEVICES)
    seg.add_argument("--axis", default="axial", choices=AXES)
    seg.add_argument("--intensity", default="ct",
                     help="ct (abdomen window), ct-<window> (lung, bone, brain, liver, "
                          "mediastinum) or mr (percentile normalisation)")
    seg.set_defaults(run=_segment)

    weights = sub.add_parser("weights", help="list or download the official SAM 2.1 weights")
    weights.add_argument("action", choices=("list", "download"))
    weights.add_argument("name", nargs="?", default="sam2.1_hiera_tiny")
    weights.set_defaults(run=_weights)

    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def _segment(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sam2refine.image.reading import load_volume
    from sam2refine.io.colors import default_color
    from sam2refine.io.segmentation import SegmentInfo, write_segmentation
    from sam2refine.sam.model import load_model
    from sam2refine.sam.prompts_file import apply_prompts, propagation_groups, read_prompts
    from sam2refine.sam.session import Session

    out = Path(args.out)
    _check_output_suffix(out)
    volume = load_volume(args.volume)
    prompts = read_prompts(args.prompts)
    model = load_model(args.model, args.image_size, args.checkpoint, args.device,
                       adapters=args.adapters)
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
    segments = []
    for index, (obj_id, seg) in enumerate(zip(ids, prompts.segments)):
        segments.append(SegmentInfo(seg.name, obj_id, seg.color or default_color(index)))
    fields = {"SAM2Refine_AlgorithmType": "SEMIAUTOMATIC"}  # a person gave the prompts
    if Path(args.volume).is_dir():  # remembered so that `export` finds the DICOM source
        fields["SAM2Refine_SourceSeries"] = str(Path(args.volume).expanduser().resolve())
    written = write_segmentation(out, session.label_volume(), segments, fields=fields)
    log.info("Wrote %s (%d segments)", written, len(segments))
    return 0


def _check_output_suffix(out: Path) -> None:
    name = out.name.lower()
    if not name.endswith((".seg.nrrd", ".nii", ".nii.gz")):
        raise SAM2RefineError(
            f"Output {out} must end in .seg.nrrd (Slicer segmentation) or .nii/.nii.gz."
        )


def _weights(args: argparse.Namespace) -> int:
    from sam2refine.sam.weights import cache_dir, load_catalogue, resolve_checkpoint

    if args.action == "list":
        for name, entry in sorted(load_catalogue().items()):
            size = f"{entry.size_bytes / 1e6:.0f} MB" if entry.size_bytes else "size unknown"
            print(f"{name:26s} {size:>10s}  {entry.url}")
        print(f"cache: {cache_dir()}")
        return 0
    print(resolve_checkpoint(args.name, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
