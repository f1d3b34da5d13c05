"""Segment names -> SNOMED CT codes for DICOM Segmentation objects (and PACS that index them).

A DICOM-SEG describes every segment by a *category* (e.g. SCT 123037004 "Anatomical
Structure") and a *type* (e.g. SCT 10200004 "Liver"), optionally with a laterality modifier
(SCT 24028007 "Right" / 7771000 "Left"). The table `data/terminology.csv` covers the BTCV and
AMOS organs and the TotalSegmentator "total" structures. Its `source` column says where each
code comes from: "DICOM" codes appear in the DICOM standard's code tables (PS3.16, CID 7151,
checked by the tests against pydicom's copy of them); "TotalSegmentator" codes are taken from
TotalSegmentator's published SNOMED mapping for the few structures DICOM has no code for.

Names are matched by their organ key (`organ_names`), so "Kidney_left", "left kidney" and
"kidney L" all give Kidney + Left. Individual ribs and S1 have no DICOM code: they get
"Rib" (+ side) or "Vertebra", and the segment label keeps the number. Unknown names fall back
to category and type SCT 85756007 "Tissue" (what 3D Slicer assigns to a new segment); the
segment label then carries the meaning.
"""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from sam2refine.io.organ_names import organ_key, organ_words, words_key

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

SCT = "SCT"
# The contexts Slicer files a DICOM-coded segment under in its terminology entries.
SLICER_TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
LEFT = ("7771000", SCT, "Left")
RIGHT = ("24028007", SCT, "Right")
_SIDES = {"left": LEFT, "right": RIGHT}


@dataclass(frozen=True)
class Term:
    """One coded concept: code value, coding scheme designator ("SCT", "DCM") and meaning."""

    value: str
    scheme: str
    meaning: str

    def to_code(self) -> Code:
        """The concept as a `pydicom.sr.coding.Code`, as highdicom expects it."""
        from pydicom.sr.coding import Code

        return Code(self.value, self.scheme, self.meaning)


GENERIC_CATEGORY = Term("85756007", SCT, "Tissue")
GENERIC_TYPE = Term("85756007", SCT, "Tissue")


@dataclass(frozen=True)
class SegmentCodes:
    """Codes describing one segment in a DICOM-SEG."""

    category: Term
    type: Term
    type_modifier: Term | None = None
    region: Term | None = None
    region_modifier: Term | None = None
    matched: str | None = None  # table entry used; None for the generic fallback
    source: str = "generic"  # "DICOM", "TotalSegmentator", "Slicer terminology" or "generic"

    @property
    def is_generic(self) -> bool:
        """True when the name was not recognised and the generic "Tissue" codes are used."""
        return self.matched is None and self.source == "generic"


@dataclass(frozen=True)
class _Entry:
    name: str
    category: Term
    type: Term
    paired: bool
    region: Term | None
    source: str


@functools.lru_cache(maxsize=1)
def load_table() -> dict[str, _Entry]:
    """The terminology table keyed by the organ keys of its names and aliases."""
    text = resources.files("sam2refine").joinpath("data/terminology.csv").read_text("utf-8")
    table: dict[str, _Entry] = {}
    for row in csv.DictReader(text.splitlines()):
        entry = _Entry(
            name=row["name"],
            category=Term(row["category_code"], SCT, row["category_meaning"]),
            type=Term(row["type_code"], SCT, row["type_meaning"]),
            paired=row["paired"] == "yes",
            region=Term(row["region_code"], SCT, row["region_meaning"])
            if row["region_code"] else None,
            source=row["source"],
        )
        for key in [row["name"], *filter(None, row["aliases"].split("|"))]:
            table.setdefault(organ_key(key), entry)
    return table


def _codes(entry: _Entry, side: tuple[str, str, str] | None) -> SegmentCodes:
    modifier = Term(*side) if side and entry.paired else None
    on_region = entry.region is not None
    return SegmentCodes(
        category=entry.category,
        type=entry.type,
        type_modifier=None if on_region else modifier,
        region=entry.region,
        region_modifier=modifier if on_region else None,
        matched=entry.name,
        source=entry.source,
    )


def lookup(name: str) -> SegmentCodes:
    """Codes for a segment name; the generic "Tissue" codes when the name is not known."""
    table = load_table()
    words, side = organ_words(name)
    if not words:
        return SegmentCodes(GENERIC_CATEGORY, GENERIC_TYPE)
    full = words_key(words, side)
    if full in table:  # e.g. "lung middle lobe right", "heart atrium left"
        return _codes(table[full], None)
    candidates = [words]
    while words and words[-1].isdigit():  # "rib left 7" -> "rib"; the number stays in the label
        words = words[:-1]
        candidates.append(words)
    for candidate in candidates:
        key = words_key(candidate, None)
        if key in table:
            return _codes(table[key], _SIDES.get(side or ""))
    return SegmentCodes(GENERIC_CATEGORY, GENERIC_TYPE)


def _parse_code(field: str) -> Term | None:
    parts = field.split("^")
    if len(parts) != 3 or not parts[0] or not parts[1]:
        return None
    return Term(value=parts[1], scheme=parts[0], meaning=parts[2] or parts[1])


def from_slicer_terminology(entry: str | None) -> SegmentCodes | None:
    """Codes from a 3D Slicer terminology string (seven '~'-separated fields), if it has them.

    Slicer stores the category/type a user picked as ``context~SCT^123037004^Anatomical
    Structure~SCT^10200004^Liver~modifier~anatomic context~region~region modifier``; that
    choice wins over the name lookup.
    """
    if not entry or entry.count("~") != 6:
        return None
    fields = entry.split("~")
    category, type_ = _parse_code(fields[1]), _parse_code(fields[2])
    if category is None or type_ is None:
        return None
    return SegmentCodes(
        category=category,
        type=type_,
        type_modifier=_parse_code(fields[3]),
        region=_parse_code(fields[5]),
        region_modifier=_parse_code(fields[6]),
        matched=type_.meaning,
        source="Slicer terminology",
    )


def codes_for_segment(name: str, terminology: str | None = None) -> SegmentCodes:
    """Codes for a segment: its Slicer terminology when set, else looked up by name.

    Slicer gives every new segment "Tissue/Tissue"; that default does not hide a name the
    table knows (a segment named "liver" still gets Liver).
    """
    chosen = from_slicer_terminology(terminology)
    if chosen is not None and (chosen.category, chosen.type) != (GENERIC_CATEGORY, GENERIC_TYPE):
        return chosen
    return lookup(name)


def slicer_terminology(name: str) -> str | None:
    """The 3D Slicer terminology entry (seven '~'-separated fields) for a structure name, with
    the codes a DICOM-SEG export uses; None for names the table does not know."""
    codes = lookup(name)
    if codes.is_generic:
        return None

    def field(term: Term | None) -> str:
        return "^^" if term is None else f"{term.scheme}^{term.value}^{term.meaning}"

    return "~".join([SLICER_TYPE_CONTEXT, field(codes.category), field(codes.type),
                     field(codes.type_modifier), SLICER_ANATOMIC_CONTEXT, field(codes.region),
                     field(codes.region_modifier)])
