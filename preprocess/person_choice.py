"""The `person` input: which performer to follow in a multi-person driving video, as the user wrote it.

"auto" (the most prominent person), an index (people numbered left to right), or a point "x,y" / box "x1,y1,x2,y2"
in pixels of the driving video; `tracking` finds the person it names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import InputError

PERSON_FIELD = "person"


@dataclass(frozen=True)
class PersonChoice:
    """The parsed `person` input: auto, an index (left to right), or a point / box in source pixels."""

    kind: Literal["auto", "index", "point", "box"] = "auto"
    index: int = 0
    coords: tuple[float, ...] = ()  # (x, y) for a point, (x1, y1, x2, y2) for a box


PERSON_HELP = (
    'use "auto" (the most prominent person), an index such as "0" (people numbered left to right), a point '
    '"x,y" or a box "x1,y1,x2,y2" in pixels of the driving video'
)
_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"


def parse_person(value: str | int | None) -> PersonChoice:
    """`person` text -> PersonChoice; InputError("invalid_person", "person") saying what is accepted."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return PersonChoice()
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InputError("invalid_person", PERSON_FIELD, f"got {value!r}; {PERSON_HELP}")
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return PersonChoice("index", index=int(text))
    for kind, count in (("point", 2), ("box", 4)):
        match = re.fullmatch(",".join([_NUMBER] * count), text)
        if match:
            coords = tuple(float(v) for v in match.groups())
            if min(coords) < 0:
                raise InputError("invalid_person", PERSON_FIELD, f"{text!r} has a negative coordinate; {PERSON_HELP}")
            if kind == "box" and not (coords[2] > coords[0] and coords[3] > coords[1]):
                raise InputError(
                    "invalid_person",
                    PERSON_FIELD,
                    f"box {text!r} needs x2 > x1 and y2 > y1 (x1,y1 = top left, x2,y2 = bottom right)",
                )
            return PersonChoice(kind, coords=coords)
    raise InputError("invalid_person", PERSON_FIELD, f"got {text!r}; {PERSON_HELP}")


def scale_choice(choice: PersonChoice, sx: float, sy: float) -> PersonChoice:
    """A point/box choice given in source pixels -> pixels of frames resized by (sx, sy)."""
    if choice.kind not in ("point", "box"):
        return choice
    scales = (sx, sy) * (len(choice.coords) // 2)
    return PersonChoice(choice.kind, coords=tuple(c * s for c, s in zip(choice.coords, scales, strict=True)))
