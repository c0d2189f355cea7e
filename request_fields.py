"""Request keys that are no input of the app: refused with the nearest field's name instead of ignored."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .errors import InputError


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
