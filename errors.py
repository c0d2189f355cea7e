"""The exception types a request ends with short of a result: a problem the user can fix in the input, a cancel."""

from __future__ import annotations

from collections.abc import Callable


class InputError(ValueError):
    """A user-fixable problem with the request: names the input, what is wrong and the fix.

    `code` is a short stable identifier (e.g. "no_person_in_video") that API clients can switch on;
    `field` is the input name as it appears in the app's JSON schema (e.g. "driving_video").
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        self.code = code
        self.field = field
        self.message = message
        super().__init__(f"[{code}] {field}: {message}")


class Cancelled(Exception):
    """The request was cancelled (the platform's cancel_requested / on_cancel): raised at the next check point
    (a denoising step, a pose or SAM2 chunk, a VAE-decoded frame, the audio mux) so the worker stays loaded for the
    next request."""


def check_cancel(should_cancel: Callable[[], bool] | None, where: str) -> None:
    """Raise Cancelled("cancelled <where>") when `should_cancel` (None: never) says the request was cancelled."""
    if should_cancel is not None and should_cancel():
        raise Cancelled(f"cancelled {where}")
