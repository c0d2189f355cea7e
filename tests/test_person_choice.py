"""person_choice: the `person` input parsed (auto, index, point, box), refused with the fix, and scaled."""

from __future__ import annotations

import pytest
from wan_animate.errors import InputError
from wan_animate.preprocess import person_choice as pc


@pytest.mark.parametrize(("value", "expected"), [
    ("auto", pc.PersonChoice()), ("", pc.PersonChoice()), (None, pc.PersonChoice()), (" AUTO ", pc.PersonChoice()),
    ("0", pc.PersonChoice("index", 0)), (2, pc.PersonChoice("index", 2)),
    ("640,360", pc.PersonChoice("point", coords=(640.0, 360.0))),
    (" 10.5, 20 ", pc.PersonChoice("point", coords=(10.5, 20.0))),
    ("1,2,30,40", pc.PersonChoice("box", coords=(1.0, 2.0, 30.0, 40.0))),
])  # fmt: skip
def test_parse_person(value, expected):
    assert pc.parse_person(value) == expected


@pytest.mark.parametrize("value", ["left", "-1", "1.5", "1,2,3", "30,40,10,20", "-5,3", True, [1, 2]])
def test_parse_person_rejects_with_the_fix(value):
    with pytest.raises(InputError) as err:
        pc.parse_person(value)
    assert (err.value.code, err.value.field) == ("invalid_person", "person")
    assert "auto" in err.value.message or "x2 > x1" in err.value.message


def test_scale_choice_maps_source_pixels_to_resized_frames():
    assert pc.scale_choice(pc.PersonChoice("point", coords=(100.0, 50.0)), 0.5, 0.25).coords == (50.0, 12.5)
    assert pc.scale_choice(pc.PersonChoice("index", index=1), 0.5, 0.5) == pc.PersonChoice("index", index=1)
