"""`sam2refine evaluate`: per-organ Dice and NSD of a folder of predictions, as a table."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("sam2refine")


def register(subparsers: argparse._SubParsersAction) -> None:
    cmd = subparsers.add_parser(
        "evaluate", help="per-organ Dice and NSD of predictions against ground-truth labels")
    cmd.add_argument("pred_dir", metavar="PRED_DIR",
                     help="predictions: <case>.seg.nrrd or label maps (<case>.nii.gz, ...)")
    cmd.add_argument("gt_dir", metavar="GT_DIR",
                     help="ground truth with the same case ids, e.g. an nnU-Net labelsTr folder")
    cmd.add_argument("--tolerance-mm", type=float, default=2.0,
                     help="NSD tolerance in mm (default 2)")
    cmd.add_argument("--dataset-json", metavar="FILE",
                     help="label names of the ground truth (nnU-Net dataset.json or labels.json; "
                          "default: GT_DIR/../dataset.json)")
    cmd.add_argument("--allow-missing", action="store_true",
                     help="score cases without a prediction as empty instead of stopping")
    cmd.add_argument("--out-csv", metavar="FILE", help="write per-case scores as CSV")
    cmd.add_argument("--out-md", metavar="FILE", help="write the Markdown table")
    cmd.set_defaults(run=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from sam2refine.cli.outputs import check_outputs
    from sam2refine.evaluate import evaluate_folders
    from sam2refine.io.atomic import atomic_write

    check_outputs([args.out_csv, args.out_md], [args.pred_dir, args.gt_dir, args.dataset_json,
                                                Path(args.gt_dir).parent / "dataset.json"])
    result = evaluate_folders(args.pred_dir, args.gt_dir, tolerance_mm=args.tolerance_mm,
                              dataset_json=args.dataset_json, allow_missing=args.allow_missing)
    table = result.to_markdown()
    print(table, end="")
    for path, text in ((args.out_csv, result.to_csv()), (args.out_md, table)):
        if path:
            atomic_write(Path(path), lambda tmp, text=text: tmp.write_text(text, "utf-8"))
            log.info("Wrote %s", path)
    return 0
