"""Label value -> organ name, from the names files label maps come with (labels.json,
nnU-Net's dataset.json, our NIfTI sidecar .labels.json)."""

from __future__ import annotations

import json
from pathlib import Path

from sam2refine.errors import PromptGeneratorError


def read_label_names(path: str | Path) -> dict[int, str]:
    """Label value -> name from a names file: the shared data's labels.json ({"1": "spleen"}),
    an nnU-Net dataset.json ({"labels": {"liver": 1}} or {"labels": {"1": "liver"}}), or our
    NIfTI sidecar .labels.json ({"labels": {"1": {"name": "liver"}}}). Background is dropped."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise PromptGeneratorError(f"Label names file not found: {path}.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PromptGeneratorError(f"Label names file {path} is not valid JSON: {exc}.") from exc
    table = data.get("labels", data) if isinstance(data, dict) else None
    names: dict[int, str] = {}
    for key, value in (table or {}).items():
        if isinstance(value, dict):
            value = value.get("name")
        pair = _value_and_name(key, value)
        if pair is not None and pair[0] != 0:
            names[pair[0]] = pair[1]
    if not names:
        raise PromptGeneratorError(
            f"{path} names no labels. Give a labels.json ({{\"1\": \"spleen\", ...}}) or an "
            "nnU-Net dataset.json."
        )
    return names


def _value_and_name(key: object, value: object) -> tuple[int, str] | None:
    if str(key).lstrip("-").isdigit() and isinstance(value, str):
        return int(str(key)), value  # {"1": "liver"}
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value, str(key)  # nnU-Net v2 {"liver": 1}
    return None  # region-based nnU-Net labels (lists) cannot be told apart in one map


def sidecar_names(label_path: Path) -> dict[int, str] | None:
    """Names found next to a label file: <base>.labels.json, labels.json, dataset.json."""
    name = label_path.name
    base = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else label_path.stem
    for candidate in (label_path.with_name(f"{base}.labels.json"),
                      label_path.with_name("labels.json"), label_path.with_name("dataset.json")):
        if candidate.is_file():
            return read_label_names(candidate)
    return None
