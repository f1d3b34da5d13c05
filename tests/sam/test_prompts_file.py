"""The prompts JSON: what is accepted, and errors that name the segment and the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sam2refine.errors import PromptError
from sam2refine.sam.prompting import mask_box_and_interior
from sam2refine.sam.prompts_file import read_prompts


def _write(tmp_path, data) -> str:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


def test_reads_all_prompt_kinds(tmp_path):
    prompts = read_prompts(_write(tmp_path, {
        "coordinates": "lps",
        "segments": [{"name": "liver", "label": 3, "color": [1, 0, 0],
                      "boxes": [{"corners": [[0, 0, 0], [5, 5, 0]], "slice": 4}],
                      "points": [{"position": [1, 2, 3], "positive": False}],
                      "masks": [{"file": "m.nii.gz"}]}],
        "range": [2, 8],
    }))
    seg = prompts.segments[0]
    assert (seg.name, seg.label, seg.color, seg.coordinates) == ("liver", 3, (1.0, 0.0, 0.0), "lps")
    assert seg.points == [([1, 2, 3], 0)]
    assert seg.boxes == [([0, 0, 0], [5, 5, 0], 4)]
    assert prompts.frame_range == (2, 8)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        ({"objects": []}, "segments is missing"),
        ({"segments": []}, "at least 1 item"),
        ({"segments": [{"points": []}]}, r"segments\[0\]\.name is missing"),
        ({"segments": [{"name": "liver"}]}, "no points, boxes or masks"),
        ({"segments": [{"name": "liver", "boxes": [{"corners": [[0, 0, 0]]}]}]}, "'liver'"),
        ({"segments": [{"name": "liver", "masks": [{"value": 1}]}]},
         r"masks\[0\]\.file is missing"),
        ({"segments": [{"name": "liver", "color": "red", "points": [{"position": [1, 2, 3]}]}]},
         "color"),
    ],
)
def test_bad_prompts_files(tmp_path, data, message):
    with pytest.raises(PromptError, match=message):
        read_prompts(_write(tmp_path, data))


def test_missing_prompts_file(tmp_path):
    with pytest.raises(PromptError, match="not found"):
        read_prompts(tmp_path / "absent.json")


def test_mask_box_and_most_interior_pixel():
    mask = np.zeros((20, 30), bool)
    mask[4:15, 6:25] = True
    box, (r, c) = mask_box_and_interior(mask)
    assert box == (4, 6, 14, 24)
    assert 8 <= r <= 10 and 13 <= c <= 17
