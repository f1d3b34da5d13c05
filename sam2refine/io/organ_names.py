"""The one key organ names are compared by, so that terminology codes, colours and the
matching of proposed organs to requested ones treat every spelling of a name alike.

"Kidney_left", "kidney left", "left kidney", "KIDNEY-L" and "Lt kidney" all have the key
"kidney left": case, separators and the position of the side word do not matter, and words
are joined without spaces ("gall bladder" and "gallbladder" are one organ).
"""

from __future__ import annotations

import re

_SIDE_WORDS = {"left": "left", "l": "left", "lt": "left",
               "right": "right", "r": "right", "rt": "right"}


def organ_words(name: str) -> tuple[list[str], str | None]:
    """(the name's words without its side word, "left" / "right" / None), lower case."""
    words = re.sub(r"[^0-9a-z]+", " ", str(name).lower()).split()
    sides = {_SIDE_WORDS[w] for w in words if w in _SIDE_WORDS}
    if len(sides) != 1:  # no side, or "left ... right": the words stay as they are
        return words, None
    return [w for w in words if w not in _SIDE_WORDS], sides.pop()


def words_key(words: list[str], side: str | None) -> str:
    """The key of a name already split by `organ_words`."""
    return "".join(words) + (f" {side}" if side else "")


def organ_key(name: str) -> str:
    """The comparison key of an organ name (see the module docstring)."""
    return words_key(*organ_words(name))
