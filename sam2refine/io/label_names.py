"""Label value -> organ name (and colour, terminology), from the names files label maps come
with: labels.json, nnU-Net's dataset.json, our NIfTI sidecar .labels.json. One reader for
every command, so the same file gives the same names to `auto`, `export` and `evaluate`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sam2refine.errors import PromptGeneratorError


@dataclass(frozen=True)
class LabelEntry:
    """What a names file says about one label value."""

    name: str
    color: tuple[float, float, float] | None = None
    terminology: str | None = None


def read_label_table(path: str | Path) -> dict[int, LabelEntry]:
    """Label value -> entry from a names file: the shared data's labels.json ({"1": "spleen"}),
    an nnU-Net dataset.json ({"labels": {"liver": 1}} or {"labels": {"1": "liver"}}), or our
    NIfTI sidecar .labels.json ({"labels": {"1": {"name": "liver", "color": [...]}}}).
    Background (0) is dropped."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError as exc:
        raise PromptGeneratorError(f"Label names file not found: {path}. Check the path.") from exc
    except IsADirectoryError as exc:
        raise PromptGeneratorError(f"Label names file {path} is a folder; give the "
                                   "labels.json or dataset.json file.") from exc
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise PromptGeneratorError(f"Label names file {path} is not valid JSON: {exc}.") from exc
    except OSError as exc:
        raise PromptGeneratorError(f"Cannot read the label names file {path}: "
                                   f"{exc.strerror or exc}.") from exc
    table = data.get("labels", data) if isinstance(data, dict) else None
    entries: dict[int, LabelEntry] = {}
    for key, value in (table if isinstance(table, dict) else {}).items():
        extra: dict = {}
        if isinstance(value, dict):
            extra, value = value, value.get("name")
        pair = _value_and_name(key, value)
        if pair is not None and pair[0] != 0 and pair[1].strip():
            entries[pair[0]] = LabelEntry(pair[1], _color(extra.get("color")),
                                          _terminology(extra.get("terminology")))
    if not entries:
        raise PromptGeneratorError(
            f"{path} names no labels. Give a labels.json ({{\"1\": \"spleen\", ...}}) or an "
            "nnU-Net dataset.json."
        )
    return entries


def read_label_names(path: str | Path) -> dict[int, str]:
    """Label value -> name from a names file (see `read_label_table`)."""
    return {value: entry.name for value, entry in read_label_table(path).items()}


def _value_and_name(key: object, value: object) -> tuple[int, str] | None:
    text = str(key).strip()
    if text.lstrip("-").isdigit() and isinstance(value, str):
        return int(text), value  # {"1": "liver"}
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value, str(key)  # nnU-Net v2 {"liver": 1}
    return None  # region-based nnU-Net labels (lists) cannot be told apart in one map


def _color(raw: object) -> tuple[float, float, float] | None:
    if (isinstance(raw, list) and len(raw) == 3 and all(
            isinstance(c, int | float) and not isinstance(c, bool) and 0 <= c <= 1 for c in raw)):
        return (float(raw[0]), float(raw[1]), float(raw[2]))
    return None


def _terminology(raw: object) -> str | None:
    return raw if isinstance(raw, str) and raw.count("~") == 6 else None


def sidecar_path(label_path: Path) -> Path | None:
    """The names file next to a label file: <base>.labels.json, labels.json, dataset.json."""
    name = label_path.name
    base = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else label_path.stem
    for candidate in (label_path.with_name(f"{base}.labels.json"),
                      label_path.with_name("labels.json"), label_path.with_name("dataset.json")):
        if candidate.is_file():
            return candidate
    return None


def sidecar_names(label_path: Path) -> dict[int, str] | None:
    """Names found next to a label file (see `sidecar_path`), or None."""
    found = sidecar_path(label_path)
    return read_label_names(found) if found is not None else None
