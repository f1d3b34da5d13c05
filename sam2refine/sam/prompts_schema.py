"""The prompts JSON as data: one schema (pydantic), and errors that name the bad field.

Every value is checked for its type and range before anything runs: `"positive": "no"` is
not a click, a NaN coordinate is not a place, `"label": 1.7` is not a label. An unknown key
is refused with the nearest known one ("rnage" -> did you mean "range"?), so a misspelt key
never silently changes what is segmented. The server's JSON bodies (`remote.http`) are built
from the same pieces (`StrictModel`, `Position`, `Coordinates`) and their errors are worded
by the same `describe_errors`.
"""

from __future__ import annotations

import difflib
import typing
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

FiniteFloat = Annotated[StrictFloat, Field(allow_inf_nan=False)]
Position = tuple[FiniteFloat, FiniteFloat, FiniteFloat]
Coordinates = Literal["ijk", "lps", "ras"]
MaskMode = Literal["refine", "exact"]
SliceIndex = Annotated[StrictInt, Field(ge=0)]
Label = Annotated[StrictInt, Field(ge=1, le=65535)]
Channel = Annotated[StrictFloat, Field(ge=0.0, le=1.0)]
# a segment name: one line with a visible character
Name = Annotated[StrictStr, Field(min_length=1, max_length=256,
                                  pattern=r"^[^\r\n\x00]*\S[^\r\n\x00]*$")]


class StrictModel(BaseModel):
    """Unknown keys refused, numbers never taken from strings or booleans."""

    model_config = ConfigDict(extra="forbid")


class Point(StrictModel):
    position: Position
    positive: StrictBool = True


class Box(StrictModel):
    corners: tuple[Position, Position]
    slice: SliceIndex | None = None


class Mask(StrictModel):
    file: Annotated[StrictStr, Field(min_length=1)]
    value: Label | None = None
    mode: MaskMode = "refine"
    slices: Annotated[list[SliceIndex], Field(min_length=1)] | None = None


def _check_range(rng: tuple[int, int] | None) -> tuple[int, int] | None:
    if rng is not None and rng[0] > rng[1]:
        raise ValueError(f"[{rng[0]}, {rng[1]}] is empty: give [first slice, last slice] with "
                         "first <= last")
    return rng


class Segment(StrictModel):
    name: Name
    label: Label | None = None
    color: tuple[Channel, Channel, Channel] | None = None
    coordinates: Coordinates | None = None
    points: list[Point] = []
    boxes: list[Box] = []
    masks: list[Mask] = []
    range: tuple[SliceIndex, SliceIndex] | None = None

    _range = field_validator("range")(_check_range)

    @model_validator(mode="after")
    def _has_prompts(self) -> Segment:
        if not (self.points or self.boxes or self.masks):
            raise ValueError(f"segment {self.name!r} has no points, boxes or masks; give at "
                             "least one prompt")
        return self


class PromptsDocument(StrictModel):
    coordinates: Coordinates = "ijk"
    source: StrictStr | None = None  # where the prompts came from (`auto --save-prompts`)
    description: StrictStr | None = None
    segments: Annotated[list[Segment], Field(min_length=1)]
    range: tuple[SliceIndex, SliceIndex] | None = None

    _range = field_validator("range")(_check_range)

    @model_validator(mode="after")
    def _unique(self) -> PromptsDocument:
        names = [s.name for s in self.segments]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"segment names must be unique; {twice[0]!r} is used twice")
        labels = [s.label for s in self.segments if s.label is not None]
        again = sorted({v for v in labels if labels.count(v) > 1})
        if again:
            raise ValueError(f"segment labels must be unique; {again[0]} is used twice")
        return self


# ----- error messages --------------------------------------------------------------------------
def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, tuple ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def known_keys(root: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model at `loc` (the location of a key inside `root`) accepts."""
    models = [root]
    for part in loc:
        if isinstance(part, str):
            nxt = []
            for model in models:
                if part in model.model_fields:
                    nxt += _models_in(model.model_fields[part].annotation)
            models = nxt or models
    keys: list[str] = []
    for model in models:
        keys += [k for k in model.model_fields if k not in keys]
    return keys


def path_text(loc: tuple, data: object = None) -> str:
    """A location as a JSON path, e.g. segments[0].points[1].positive (with the segment's
    name when it has one: segments[0] 'liver')."""
    text, node = "", data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and -len(node) <= part < len(node) \
                else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                text += f" ({node['name'][:40]!r})"
        else:
            text += ("." if text else "") + str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text or "the document"


def _one(error: dict, root: type[BaseModel] | None, data: object) -> str:
    loc = tuple(p for p in error.get("loc", ()) if not (isinstance(p, str) and p.startswith(
        ("function-", "tagged-union", "nullable"))))
    where, kind = path_text(loc, data), error.get("type", "")
    given = error.get("input")
    shown = repr(given) if len(repr(given)) <= 40 else repr(given)[:37] + "..."
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        known = known_keys(root, loc[:-1]) if root is not None else []
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
        hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(known)}"
        return f"{where}: unknown key ({hint})"
    if kind == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'parse error')})"
    if kind == "model_type" and not loc:
        return f"{where} must be a JSON object ({{...}}), not {type(given).__name__}"
    if kind == "missing":
        return f"{where} is missing"
    if kind == "finite_number":
        return f"{where}: {shown} is not a finite number"
    if kind == "value_error":
        return f"{where}: {str(error.get('msg', '')).removeprefix('Value error, ')}"
    message = str(error.get("msg", "is invalid"))
    message = message[0].lower() + message[1:] if message else "is invalid"
    return f"{where}: {message} (got {shown})"


def describe_errors(exc: ValidationError | list[dict], root: type[BaseModel] | None,
                    data: object = None, limit: int = 3) -> str:
    """Validation errors (a pydantic `ValidationError` or its `.errors()` list) as one line:
    each bad field's path and what is wrong; unknown keys with the nearest key of `root`."""
    errors = exc.errors() if isinstance(exc, ValidationError) else list(exc)
    parts = [_one(e, root, data) for e in errors[:limit]]
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more


def validate_prompts(data: object) -> tuple[PromptsDocument | None, str | None]:
    """(document, None) when `data` follows the schema, else (None, one-line reason)."""
    try:
        return PromptsDocument.model_validate(data), None
    except ValidationError as exc:
        return None, describe_errors(exc, PromptsDocument, data)
