"""Rules on request fields that their types do not express: unknown keys refused with the nearest field's name, files
resolved where they arrive, and the values and combinations the model cannot run. AppInput's validators call these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .errors import InputError
from .input_files import to_file
from .limits import LIMITS


def refuse_unknown_fields(data: Any, model: type[BaseModel], prefix: str = "") -> None:
    """InputError for a request key that is no field of `model`, with the nearest field name: a typo such as
    `sampling_step` would otherwise be ignored silently and the job run with a setting nobody asked for."""
    if not isinstance(data, dict):
        return
    import difflib

    fields = list(model.model_fields)
    for key in data:
        if key not in fields:
            name = str(key)[:80]
            near = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else f"; the inputs are: {', '.join(fields)}"
            raise InputError("unknown_field", f"{prefix}{name}", f"is not an input of this app{hint}")


def fetch_lora_files(value: Any, lora_model: type[BaseModel]) -> Any:
    """Each LoRA's file resolved by to_file, its errors naming `loras[i].file` (or `loras[i].<unknown key>`)."""
    if not isinstance(value, list):
        return value  # pydantic refuses it: "Input should be a valid list"
    items = []
    for i, item in enumerate(value):
        if isinstance(item, dict):
            refuse_unknown_fields(item, lora_model, f"loras[{i}].")
            if "file" in item:
                item = {**item, "file": to_file(item["file"], f"loras[{i}].file")}
        items.append(item)
    return items


def check_fps(value: float) -> float:
    """-1 (the source rate) or a rate within the limits."""
    if value != -1 and not (1 <= value <= LIMITS.max_fps):
        raise ValueError(f"fps must be -1 (keep the source rate) or between 1 and {LIMITS.max_fps}")
    return value


def check_person(value: Any) -> str:
    """The `person` selector, parsed once here so a bad one fails before any download or decode."""
    from .preprocess.person_choice import parse_person

    parse_person(value)  # InputError (a ValueError) naming `person` and what it accepts
    return "auto" if value is None else str(value).strip()


def check_clip_len(value: int) -> int:
    """4n+1 frames (the VAE's 4x time stride plus the first frame)."""
    if value % 4 != 1:
        raise ValueError(f"clip_len must be 4n+1 (e.g. 77, 81); {value} is not. Nearest: {4 * round((value - 1) / 4) + 1}")
    return value


def check_consistent(inp: Any) -> None:
    """Fields that are valid alone but not together (inp: an AppInput)."""
    if inp.refert_num >= inp.clip_len:
        raise ValueError(f"refert_num ({inp.refert_num}) must be smaller than clip_len ({inp.clip_len})")
    if inp.use_flux and not inp.retarget_flag:
        raise ValueError("use_flux only acts with retarget_flag=true; set both or neither")
    if inp.retarget_flag and inp.mode == "replacement":
        raise ValueError("retarget_flag applies to mode 'animation' only (replacement keeps the video's person size)")
