"""The one exception type for problems a user can fix by changing their input."""

from __future__ import annotations


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
