"""Every CLI verb against bad files, geometry, JSON, paths, checkpoints and options.

Each case must end with exit status 2 and one line on stderr that names the problem and
what to do, without a traceback, and leave every file of the workspace byte-identical with
nothing new (no partial output, no temporary file).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest

from sam2refine.cli.main import main
from tests.conftest import TEST_IMAGE_SIZE
from tests.hostile import breakers as b
from tests.hostile.conftest import Case, assert_refusal, snapshot

MODEL = ["--image-size", str(TEST_IMAGE_SIZE), "--device", "cpu", "--checkpoint", "{ckpt}"]


def seg(*extra: str, volume: str = "{w}/ct.nii.gz", prompts: str = "{w}/prompts.json",
        out: str = "{w}/out.seg.nrrd", model: bool = True) -> list[str]:
    return ["segment", volume, "--prompts", prompts, "--out", out, *(MODEL if model else []),
            *extra]


def export(*extra: str, source: str = "{w}/seg.seg.nrrd", out: str = "{w}/out.dcm") -> list[str]:
    return ["export", source, "--out", out, *extra]


def auto(*extra: str, volume: str = "{w}/ct.nii.gz", out: str = "{w}/auto.seg.nrrd",
         labels: str = "{w}/labels.nii.gz") -> list[str]:
    return ["auto", volume, "--out", out, "--prompts-from", labels, *MODEL, *extra]


def _prompt_case(id: str, expect: str, segment: dict | None = None, **top) -> Case:
    return Case(id, seg(), expect, lambda w: b.prompts(w / "prompts.json", segment, **top))


def _raw_prompts(id: str, text: str, expect: str) -> Case:
    return Case(id, seg(), expect, lambda w: b.json_file(w / "prompts.json", text))


NAN_POINT = '{"segments": [{"name": "liver", "points": [{"position": [NaN, 20, 6]}]}]}'
INF_POINT = '{"segments": [{"name": "liver", "points": [{"position": [Infinity, 20, 6]}]}]}'
BIG_POINT = '{"segments": [{"name": "liver", "points": [{"position": [1e999, 20, 6]}]}]}'
DUP_KEY = '{"segments": [{"name": "liver", "name": "x", "points": [{"position": [1, 2, 3]}]}]}'


def _busy_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


_BUSY = _busy_port()  # held for the whole module: a port another server uses

CASES = [
    # ----- bad image files -----------------------------------------------------------------
    Case("volume-missing", seg(volume="{w}/nope.nii.gz"), r"not found: .*nope\.nii\.gz"),
    Case("volume-garbage", seg(), r"Cannot read .*ct\.nii\.gz",
         lambda w: b.garbage(w / "ct.nii.gz")),
    Case("volume-gzip-garbage", seg(), r"ct\.nii\.gz", lambda w: b.gz_garbage(w / "ct.nii.gz")),
    Case("volume-empty-file", seg(), r"Cannot read", lambda w: b.empty(w / "ct.nii.gz")),
    Case("volume-truncated", seg(), r"incomplete", lambda w: b.truncate(w / "ct.nii.gz")),
    Case("volume-nan-nifti", seg(), r"NaN or infinite",
         lambda w: b.float_ct(w / "ct.nii.gz", np.nan)),
    Case("volume-inf-nifti", seg(), r"NaN or infinite",
         lambda w: b.float_ct(w / "ct.nii.gz", np.inf)),
    Case("volume-nan-nrrd", seg(volume="{w}/ct.nrrd"), r"NaN or infinite",
         lambda w: b.float_ct(w / "ct.nrrd", np.nan)),
    Case("volume-2d", seg(), r"2D image",
         lambda w: b.image(w / "ct.nii.gz", np.arange(64, dtype=np.int16).reshape(8, 8))),
    Case("volume-one-slice", seg(), r"single slice",
         lambda w: b.image(w / "ct.nii.gz", np.arange(64, dtype=np.int16).reshape(1, 8, 8))),
    Case("volume-rgb", seg(), r"multi-component",
         lambda w: b.image(w / "ct.nii.gz", np.zeros((4, 8, 8, 3), np.uint8) + 1, vector=True)),
    Case("volume-4d", seg(volume="{w}/ct.nrrd"), r"4D image",
         lambda w: b.image(w / "ct.nrrd", np.arange(2 * 4 * 8 * 8, dtype=np.int16).reshape(
             2, 4, 8, 8))),
    Case("volume-constant", seg(), r"same value",
         lambda w: b.image(w / "ct.nii.gz", np.full((6, 8, 8), 40, np.int16))),
    Case("volume-zero-spacing", seg(volume="{w}/ct.nrrd"), r"spacing|Cannot read",
         lambda w: b.nrrd_header(w / "ct.nrrd", "(0,0,0) (0,1,0) (0,0,1)")),
    Case("volume-sheared", seg(volume="{w}/ct.nrrd"), r"orientation|Cannot read",
         lambda w: b.nrrd_header(w / "ct.nrrd", "(1,0,0) (1,1,0) (0,0,1)")),
    Case("volume-png", seg(volume="{w}/ct.png"), r"2D image",
         lambda w: b.image(w / "ct.png", np.arange(64, dtype=np.uint8).reshape(8, 8))),
    Case("volume-empty-folder", seg(volume="{w}/emptydir"), r"is empty",
         lambda w: (w / "emptydir").mkdir()),
    Case("volume-folder-without-dicom", seg(volume="{w}/preds"), r"No DICOM series found"),
    Case("volume-folder-of-folders", seg(volume="{w}/dataset"), r"subfolders"),
    # ----- DICOM series ----------------------------------------------------------------------
    Case("dicom-missing-slice", seg(volume="{w}/dicom"), r"has a gap: img_\d+\.dcm and "
         r"img_\d+\.dcm are 6 mm apart", lambda w: b.dicom_drop(w / "dicom")),
    Case("dicom-truncated-file", seg(volume="{w}/dicom"), r"img_\d+\.dcm is truncated",
         lambda w: b.dicom_truncate(w / "dicom")),
    Case("dicom-duplicate-slice", seg(volume="{w}/dicom"), r"same position",
         lambda w: b.dicom_duplicate(w / "dicom")),
    Case("dicom-two-series", seg(volume="{w}/two"), r"holds 2 image series: .*--series"),
    Case("dicom-unknown-series", seg("--series", "1.2.3", volume="{w}/two"),
         r"no image series 1\.2\.3; it holds"),
    Case("series-for-a-file", seg("--series", "1.2.3"), r"--series picks a series in a DICOM "
         "folder"),
    # ----- the prompts file ------------------------------------------------------------------
    Case("prompts-missing", seg(prompts="{w}/none.json"), r"Prompts file not found"),
    Case("prompts-folder", seg(prompts="{w}/dicom"), r"Prompts file is a folder"),
    _raw_prompts("prompts-not-json", "{segments: [", r"not valid JSON"),
    _raw_prompts("prompts-empty", "", r"not valid JSON"),
    Case("prompts-latin1", seg(), r"not UTF-8",
         lambda w: (w / "prompts.json").write_bytes('{"segments": "Läsion"}'.encode("latin-1"))),
    _raw_prompts("prompts-top-list", "[1, 2]", r"must be a JSON object"),
    _raw_prompts("prompts-deep", "[" * 100000 + "]" * 100000, r"not valid JSON|JSON object"),
    _raw_prompts("prompts-duplicate-key", DUP_KEY, r"'name' appears twice"),
    _raw_prompts("point-nan", NAN_POINT, r"position\[0\]: nan is not a finite number"),
    _raw_prompts("point-infinity", INF_POINT, r"position\[0\]: inf is not a finite number"),
    _raw_prompts("point-overflow", BIG_POINT, r"position\[0\]: inf is not a finite number"),
    _prompt_case("positive-no", r"points\[0\]\.positive: input should be a valid boolean",
                 {"points": [{"position": [18, 20, 6], "positive": "no"}]}),
    _prompt_case("positive-one", r"positive: input should be a valid boolean",
                 {"points": [{"position": [18, 20, 6], "positive": 1}]}),
    _prompt_case("point-two-numbers", r"points\[0\]\.position\[2\] is missing",
                 {"points": [{"position": [18, 20]}]}),
    _prompt_case("point-string", r"position\[1\]: input should be a valid number",
                 {"points": [{"position": [18, "20", 6]}]}),
    _prompt_case("point-misspelt", r"positon: unknown key \(did you mean 'position'\?\)",
                 {"points": [{"positon": [18, 20, 6]}]}),
    _prompt_case("box-letters", r"boxes\[0\]\.corners",
                 {"boxes": [{"corners": ["a", "b", "c"]}]}),
    _prompt_case("box-corner-letters", r"corners\[0\]\[0\]: input should be a valid number",
                 {"boxes": [{"corners": [["a", "b", "c"], [1, 2, 3]]}]}),
    _prompt_case("box-slice-x", r"boxes\[0\]\.slice: input should be a valid integer",
                 {"boxes": [{"corners": [[12, 14, 6], [24, 26, 6]], "slice": "x"}]}),
    _prompt_case("box-slice-past-end", r"box slice 99 is past the last slice \(11\)",
                 {"boxes": [{"corners": [[12, 14, 6], [24, 26, 6]], "slice": 99}]}),
    _prompt_case("label-one", r"label: input should be a valid integer \(got 'one'\)",
                 {"label": "one"}),
    _prompt_case("label-fraction", r"label: input should be a valid integer \(got 1\.7\)",
                 {"label": 1.7}),
    _prompt_case("label-true", r"label: input should be a valid integer \(got True\)",
                 {"label": True}),
    _prompt_case("label-zero", r"label: input should be greater than or equal to 1",
                 {"label": 0}),
    _prompt_case("label-huge", r"label: input should be less than or equal to 65535",
                 {"label": 70000}),
    _prompt_case("range-misspelt", r"rnage: unknown key \(did you mean 'range'\?\)",
                 {"rnage": [0, 5]}),
    _prompt_case("range-one-number", r"range\[1\] is missing", {"range": [3]}),
    _prompt_case("range-three-numbers", r"range: tuple should have at most 2",
                 {"range": [1, 2, 3]}),
    _prompt_case("range-reversed", r"range: \[5, 2\] is empty", {"range": [5, 2]}),
    _prompt_case("range-past-end", r"range of segment 'liver' \[0, 999\] goes past the last "
                 r"slice \(11\)", {"range": [0, 999]}),
    _prompt_case("range-negative", r"range\[0\]: input should be greater than or equal to 0",
                 {"range": [-1, 5]}),
    _prompt_case("top-range-misspelt", r"^sam2refine: error: .*rnage: unknown key \(did you "
                 r"mean 'range'\?\)", None, rnage=[0, 5]),
    _prompt_case("segments-misspelt", r"segmnets: unknown key \(did you mean 'segments'\?\)",
                 None, segmnets=[]),
    _prompt_case("coordinates-xyz", r"coordinates: input should be 'ijk', 'lps' or 'ras'",
                 {"coordinates": "xyz"}),
    _prompt_case("color-name", r"color: input should be a valid tuple", {"color": "red"}),
    _prompt_case("color-out-of-range", r"color\[0\]: input should be less than or equal to 1",
                 {"color": [2, 0, 0]}),
    _prompt_case("name-empty", r"name: string should match pattern", {"name": "  "}),
    _prompt_case("name-newline", r"name: string should match pattern", {"name": "a\nb"}),
    _prompt_case("name-too-long", r"name: string should have at most 256",
                 {"name": "x" * 300}),
    _prompt_case("no-prompts", r"segment 'liver' has no points, boxes or masks",
                 {"points": []}),
    _raw_prompts("duplicate-names", '{"segments": [{"name": "a", "points": [{"position": [1, 2, '
                 '3]}]}, {"name": "a", "points": [{"position": [1, 2, 3]}]}]}',
                 r"segment names must be unique; 'a' is used twice"),
    _prompt_case("mask-missing-file", r"mask file: .*not found: .*absent\.nii\.gz",
                 {"points": [], "masks": [{"file": "absent.nii.gz"}]}),
    _prompt_case("mask-slices-past-end", r"slice 999 is past the last slice",
                 {"points": [], "masks": [{"file": "coarse.nii.gz", "slices": [999]}]}),
    _prompt_case("mask-value-absent", r"has no voxels with value 9",
                 {"points": [], "masks": [{"file": "coarse.nii.gz", "value": 9}]}),
    _prompt_case("mask-mode-bogus", r"mode: input should be 'refine' or 'exact'",
                 {"points": [], "masks": [{"file": "coarse.nii.gz", "mode": "bogus"}]}),
    Case("mask-truncated", seg(), r"mask file: .*incomplete",
         lambda w: b.truncate(w / "coarse.nii.gz")),
    Case("mask-nan", seg(), r"mask file: .*NaN or infinite",
         lambda w: b.float_ct(w / "coarse.nii.gz", np.nan)),
    Case("mask-other-scan", seg(), r"does not overlap the image", lambda w: _far_mask(w)),
    # ----- outputs that would destroy an input ------------------------------------------------
    Case("out-is-the-ct", seg(out="{w}/ct.nii.gz"), r"would overwrite the input .*ct\.nii\.gz"),
    Case("out-is-a-mask-prompt", seg(out="{w}/coarse.nii.gz"), r"would overwrite the input "
         r".*coarse\.nii\.gz"),
    Case("out-symlink-to-ct", seg(out="{w}/alias.nii.gz"), r"would overwrite the input",
         lambda w: b.link(w / "ct.nii.gz", w / "alias.nii.gz")),
    Case("out-hardlink-to-ct", seg(out="{w}/alias.nii.gz"), r"would overwrite the input",
         lambda w: b.link(w / "ct.nii.gz", w / "alias.nii.gz", hard=True)),
    Case("out-dotdot-to-ct", seg(out="{w}/dicom/../ct.nii.gz"), r"would overwrite the input"),
    Case("out-into-dicom-file", seg(out="{w}/dicom/img_0003.nii", volume="{w}/dicom"),
         r"would overwrite", lambda w: (w / "dicom" / "img_0003.nii").write_bytes(b"x")),
    Case("out-sidecar-is-input", export("--label-names", "{w}/out.labels.json",
                                        source="{w}/labels.nii.gz", out="{w}/out.nii.gz"),
         r"would overwrite the input .*out\.labels\.json",
         lambda w: b.copy(w / "labels.json", w / "out.labels.json")),
    Case("out-is-a-folder", seg(out="{w}/folder.seg.nrrd"), r"is a folder",
         lambda w: (w / "folder.seg.nrrd").mkdir()),
    Case("out-under-a-file", seg(out="{w}/ct.nii.gz/x.seg.nrrd"), r"is a file, not a folder"),
    Case("out-bad-suffix", seg(out="{w}/out.png"), r"must end in \.seg\.nrrd"),
    # ----- checkpoints and model options ------------------------------------------------------
    Case("checkpoint-missing", ["segment", "{w}/ct.nii.gz", "--prompts", "{w}/prompts.json",
                                "--out", "{w}/o.seg.nrrd", "--checkpoint", "{w}/none.pt",
                                "--image-size", "256", "--device", "cpu"], r"none\.pt"),
    Case("checkpoint-garbage", seg("--checkpoint", "{w}/bad.pt"), r"bad\.pt",
         lambda w: b.garbage(w / "bad.pt")),
    Case("checkpoint-truncated", seg("--checkpoint", "{w}/cut.pt"), r"cut\.pt",
         lambda w: _truncated_ckpt(w)),
    Case("checkpoint-pickle-bomb", seg("--checkpoint", "{w}/evil.pt"), r"evil\.pt",
         lambda w: b.pickle_bomb(w / "evil.pt")),
    Case("checkpoint-other-model", seg("--model", "sam2.1_hiera_small"),
         r"sam2\.1_hiera_tiny checkpoint"),
    Case("model-unknown", seg("--model", "sam9_giant"), r"sam9_giant"),
    Case("adapters-missing", seg("--adapters", "{w}/none.safetensors"), r"none\.safetensors"),
    Case("adapters-garbage", seg("--adapters", "{w}/bad.safetensors"), r"bad\.safetensors",
         lambda w: b.garbage(w / "bad.safetensors")),
    Case("image-size-odd", seg("--image-size", "300", model=False), r"--image-size"),
    Case("axis-bogus", seg("--axis", "diagonal"), r"--axis"),
    # ----- export ------------------------------------------------------------------------------
    Case("export-missing", export(source="{w}/none.seg.nrrd"), r"not found"),
    Case("export-truncated-seg-nrrd", export(), r"damaged or incomplete|cut off",
         lambda w: b.truncate(w / "seg.seg.nrrd")),
    Case("export-garbage-seg-nrrd", export(), r"Cannot read the segmentation",
         lambda w: b.garbage(w / "seg.seg.nrrd")),
    Case("export-truncated-nifti", export(source="{w}/labels.nii.gz", out="{w}/o.seg.nrrd"),
         r"incomplete", lambda w: b.truncate(w / "labels.nii.gz")),
    Case("export-nan-labels", export(source="{w}/labels.nii.gz", out="{w}/o.seg.nrrd"),
         r"NaN or infinite", lambda w: b.float_ct(w / "labels.nii.gz", np.nan)),
    Case("export-float-labels", export(source="{w}/labels.nii.gz", out="{w}/o.seg.nrrd"),
         r"non-integer", lambda w: b.float_ct(w / "labels.nii.gz", 0.5)),
    Case("export-over-its-source", export(out="{w}/seg.seg.nrrd"),
         r"would overwrite the input .*seg\.seg\.nrrd"),
    Case("export-over-names-file", export("--format", "dicom-seg", "--label-names",
                                          "{w}/labels.json", source="{w}/labels.nii.gz",
                                          out="{w}/labels.json"), r"would overwrite the input"),
    Case("export-over-reference-slice", export(out="{w}/dicom/img_0002.dcm"),
         r"would overwrite the file .*img_0002\.dcm"),
    Case("export-no-reference", export(source="{w}/labels.nii.gz"),
         r"not made on a DICOM series .*--reference-series"),
    Case("export-reference-missing", export("--reference-series", "{w}/gone"),
         r"Reference series folder not found"),
    Case("export-reference-moved", export(), r"no longer there: .*--reference-series",
         lambda w: (w / "dicom").rename(w / "moved")),
    Case("export-reference-two-series", export("--reference-series", "{w}/two"),
         r"no image series .*; it holds"),
    Case("export-reference-gap", export(), r"has a gap", lambda w: b.dicom_drop(w / "dicom")),
    Case("export-reference-truncated", export(), r"truncated",
         lambda w: b.dicom_truncate(w / "dicom", 2)),
    Case("export-other-grid", export("--reference-series", "{w}/dicom",
                                     source="{w}/small.nii.gz"), r"does not lie on the voxel grid",
         lambda w: b.image(w / "small.nii.gz", np.ones((4, 8, 8), np.uint8), spacing=(2, 2, 2))),
    Case("export-empty", export("--reference-series", "{w}/dicom", source="{w}/zero.nii.gz"),
         r"empty", lambda w: _zero_labels(w)),
    Case("export-names-missing", export("--label-names", "{w}/none.json"), r"not found"),
    Case("export-names-not-json", export("--label-names", "{w}/bad.json"), r"not valid JSON",
         lambda w: b.json_file(w / "bad.json", "{oops")),
    Case("export-names-nothing", export("--label-names", "{w}/bad.json"), r"names no labels",
         lambda w: b.json_file(w / "bad.json", {"x": [1, 2]})),
    Case("export-format-mismatch", export("--format", "nifti", out="{w}/o.seg.nrrd"),
         r"must end in \.nii or \.nii\.gz"),
    Case("export-format-unknown", export(out="{w}/o.txt"), r"Cannot tell the format"),
    Case("export-overlap-to-nifti", export(source="{w}/layers.seg.nrrd", out="{w}/o.nii.gz"),
         r"overlap in \d+ voxel.*\.seg\.nrrd or DICOM-SEG", lambda w: _layered(w)),
    Case("export-detached-data", export(source="{w}/detached.seg.nrrd", out="{w}/o.nii.gz"),
         r"separate data file", lambda w: _detached(w)),
    # ----- auto --------------------------------------------------------------------------------
    Case("auto-labels-missing", auto(labels="{w}/none.nii.gz"), r"not found"),
    Case("auto-labels-truncated", auto(), r"incomplete",
         lambda w: b.truncate(w / "labels.nii.gz")),
    Case("auto-labels-without-names", auto(), r"No label names .*--label-names",
         lambda w: (w / "labels.json").unlink()),
    Case("auto-out-is-the-ct", auto(out="{w}/ct.nii.gz"), r"would overwrite the input"),
    Case("auto-save-prompts-over-input", auto("--save-prompts", "{w}/labels.json"),
         r"would overwrite the input .*labels\.json"),
    Case("auto-folder-out-file", auto(volume="{w}/preds", labels="{w}/preds"),
         r"--out must be a folder"),
    Case("auto-folder-labels-file", auto(volume="{w}/preds", out="{w}/outdir"),
         r"--prompts-from must be a folder"),
    Case("auto-two-series", auto(volume="{w}/two"), r"holds 2 image series"),
    Case("auto-generator-garbage", ["auto", "{w}/ct.nii.gz", "--out", "{w}/a.seg.nrrd",
                                    "--prompt-generator", "{w}/gen.pt", *MODEL], r"gen\.pt",
         lambda w: b.garbage(w / "gen.pt")),
    Case("auto-margin-negative", auto("--margin", "-2"), r"--margin: -2 must be 0 or more"),
    Case("auto-stages-three", auto("--stages", "3"), r"--stages"),
    # ----- serve -------------------------------------------------------------------------------
    Case("serve-port-too-big", ["serve", "--port", "99999"], r"99999 is not a port"),
    Case("serve-port-negative", ["serve", "--port", "-1"], r"-1 is not a port"),
    Case("serve-port-words", ["serve", "--port", "eighty"], r"'eighty' is not a whole number"),
    Case("serve-open-without-token", ["serve", "--host", "0.0.0.0", "--port", "0"],
         r"without an access token"),
    Case("serve-port-in-use", ["serve", "--port", str(_BUSY.getsockname()[1])],
         r"Cannot listen on 127\.0\.0\.1:\d+"),
    # ----- evaluate ----------------------------------------------------------------------------
    Case("evaluate-pred-missing", ["evaluate", "{w}/none", "{w}/dataset/labelsTr"],
         r"none"),
    Case("evaluate-gt-empty", ["evaluate", "{w}/preds", "{w}/emptydir"], r"emptydir",
         lambda w: (w / "emptydir").mkdir()),
    Case("evaluate-csv-over-gt", ["evaluate", "{w}/preds", "{w}/dataset/labelsTr",
                                  "--out-csv", "{w}/dataset/labelsTr/phantom_000.nii.gz"],
         r"would overwrite the file .*phantom_000\.nii\.gz"),
    Case("evaluate-md-over-dataset-json", ["evaluate", "{w}/preds", "{w}/dataset/labelsTr",
                                           "--out-md", "{w}/dataset/dataset.json"],
         r"would overwrite"),
    Case("evaluate-tolerance-zero", ["evaluate", "{w}/preds", "{w}/dataset/labelsTr",
                                     "--tolerance-mm", "0"], r"tolerance must be positive"),
    Case("evaluate-names-garbage", ["evaluate", "{w}/preds", "{w}/dataset/labelsTr",
                                    "--dataset-json", "{w}/bad.json"], r"not valid JSON",
         lambda w: b.json_file(w / "bad.json", "{")),
    Case("evaluate-pred-truncated", ["evaluate", "{w}/preds", "{w}/dataset/labelsTr"],
         r"incomplete", lambda w: b.truncate(w / "preds" / "phantom_001.nii.gz")),
    # ----- the other verbs ---------------------------------------------------------------------
    Case("weights-unknown", ["weights", "download", "sam9_giant"], r"sam9_giant"),
    Case("weights-bad-action", ["weights", "delete"], r"invalid choice: 'delete'"),
    Case("phantoms-zero-cases", ["make-phantoms", "{w}/new", "--cases", "0"],
         r"--cases: 0 must be at least 1"),
    Case("phantoms-zero-shape", ["make-phantoms", "{w}/new", "--shape", "0", "8", "8"],
         r"--shape: 0 must be at least 1"),
    Case("phantoms-over-a-bigger-dataset", ["make-phantoms", "{w}/dataset", "--cases", "1"],
         r"already holds other files \(phantom_001"),
    Case("finetune-no-dataset", ["finetune", "{w}/none", "--out", "{w}/ft"], r"none"),
    Case("finetune-zero-epochs", ["finetune", "{w}/dataset", "--out", "{w}/ft", "--epochs",
                                  "0"], r"--epochs must be at least 1"),
    Case("promptgen-no-dataset", ["train-prompt-generator", "{w}/none", "--out", "{w}/pg"],
         r"none"),
    Case("promptgen-channels-words", ["train-prompt-generator", "{w}/dataset", "--out",
                                      "{w}/pg", "--channels", "a,b"], r"--channels"),
    Case("verb-unknown", ["segmnet", "{w}/ct.nii.gz"], r"invalid choice: 'segmnet'"),
    Case("option-unknown", seg("--promts", "{w}/prompts.json"), r"unrecognized arguments"),
    Case("option-missing", ["segment", "{w}/ct.nii.gz", "--out", "{w}/o.seg.nrrd"],
         r"required: --prompts"),
]


def _far_mask(w) -> None:
    """A mask made for another scan: it lies 5 m away from this one."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ones((4, 8, 8), np.uint8))
    img.SetOrigin((5000.0, 5000.0, 5000.0))
    sitk.WriteImage(img, str(w / "coarse.nii.gz"))


def _truncated_ckpt(w) -> None:
    b.copy(CKPT[0], w / "cut.pt")  # the tiny checkpoint, cut off
    b.truncate(w / "cut.pt", 0.3)


def _zero_labels(w) -> None:
    from sam2refine.image.reading import load_volume

    ct = load_volume(w / "dicom")
    b.phantom_volume(w / "zero.nii.gz", ct.with_voxels(np.zeros(ct.voxels.shape, np.uint8)))


def _layered(w) -> None:
    from sam2refine.image.reading import load_volume
    from sam2refine.io.segmentation import SegmentInfo, write_seg_nrrd

    ct = load_volume(w / "ct.nii.gz")
    a = np.zeros(ct.voxels.shape, np.uint8)
    a[2:6, 5:15, 5:15] = 1
    c = np.zeros(ct.voxels.shape, np.uint8)
    c[4:8, 10:20, 10:20] = 1
    write_seg_nrrd(w / "layers.seg.nrrd", [ct.with_voxels(a), ct.with_voxels(c)],
                   [SegmentInfo("liver", 1, (1, 0, 0), layer=0),
                    SegmentInfo("tumor", 1, (0, 1, 0), layer=1)])


def _detached(w) -> None:
    (w / "detached.seg.nrrd").write_text(
        "NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\n"
        "sizes: 4 4 4\nspace directions: (1,0,0) (0,1,0) (0,0,1)\nkinds: domain domain domain\n"
        "encoding: raw\nspace origin: (0,0,0)\ndata file: /etc/hostname\n\n")


CKPT: list = []


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_cli_refuses_with_one_line_and_touches_nothing(case: Case, workspace, tiny_checkpoint,
                                                       capsys):
    CKPT[:] = [tiny_checkpoint]
    if case.setup is not None:
        case.setup(workspace)
    before = snapshot(workspace, tiny_checkpoint)
    argv = [a.format(w=workspace, ckpt=tiny_checkpoint) for a in case.args]
    status = main(argv)
    err = capsys.readouterr().err
    assert status == case.status, f"exit status {status}; stderr:\n{err}"
    assert_refusal(err, case.expect)
    assert err.startswith("sam2refine: error:"), err
    assert snapshot(workspace, tiny_checkpoint) == before, "a file changed or appeared"


def test_the_suite_is_big_enough():
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
