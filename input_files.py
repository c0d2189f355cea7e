"""A request's file values -> local files: the one place an input URL is downloaded or a data URI decoded.

A file field arrives as a string (http(s) URL, data URI or local path) or an object {"uri": ..., "path": ...}.
SDK 0.36's `File` takes {"path": "https://..."} for a local path, downloads without a deadline or size cap, keeps a
truncated transfer in its cache and raises TypeError on wrong JSON types. `to_file` checks the value's shape, then
downloads (a total deadline, the size cap from Content-Length before the transfer and from the bytes during it,
a temp name renamed only when complete) or decodes it, and returns the SDK's `File` pointing at the local copy, so
the schema and the serialized form stay the SDK's. Every problem is an InputError naming the field.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from inferencesh import File

from .errors import InputError
from .limits import LIMITS

logger = logging.getLogger("wan_animate.input_files")

FILE_KEYS = ("uri", "path", "content_type", "size", "filename")  # what the SDK's File accepts in an object
MAX_PATH_CHARS = 4096  # Linux PATH_MAX
MAX_NAME_BYTES = 255  # Linux NAME_MAX, per path component
CHUNK_BYTES = 1 << 20
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SHAPE_HINT = 'give a URL or path string, or {"uri": "https://..."} / {"path": "file.mp4"}'


def is_url(location: str) -> bool:
    return urllib.parse.urlparse(location).scheme in ("http", "https")


def file_location(value: Any, field: str) -> str | None:
    """The URL, data URI or local path a file value names (None for an empty value), or an InputError when the
    JSON has the wrong shape. In an object, a non-empty `path` wins over `uri`, as in the SDK."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        raise InputError("invalid_file", field, f"expected a string or an object, got {_json_type(value)}; {_SHAPE_HINT}")
    unknown = [key for key in value if key not in FILE_KEYS]
    if unknown:
        raise InputError(
            "invalid_file", field, f"unknown key {str(unknown[0])[:50]!r} in the file object; allowed: {', '.join(FILE_KEYS)}"
        )
    for key in ("uri", "path", "content_type", "filename"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise InputError("invalid_file", field, f"'{key}' must be a string, got {_json_type(value[key])}")
    size = value.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise InputError("invalid_file", field, f"'size' must be an integer, got {_json_type(size)}")
    location = value.get("path") or value.get("uri")
    if not location:
        raise InputError("missing_input", field, f"the file object has neither 'uri' nor 'path'; {_SHAPE_HINT}")
    return location


def to_file(value: Any, field: str) -> File | None:
    """The SDK File for a request's file value, with any URL downloaded and any data URI decoded to a local file.

    A File object passes through unchanged (built in Python, not from JSON); an empty value is None, as in the SDK.
    """
    if isinstance(value, File):
        return value
    location = file_location(value, field)
    if location is None:
        return None
    extra = {k: value[k] for k in ("content_type", "filename") if isinstance(value, dict) and value.get(k)}
    if location.startswith("data:"):
        path, media_type = decode_data_uri(location, field)
        return File(path=str(path), content_type=extra.get("content_type") or media_type)
    if is_url(location):
        return File(uri=location, path=str(download(location, field)), **extra)
    if _SCHEME.match(location):
        raise InputError("unsupported_url", field, f"only http:// and https:// URLs are fetched, not {_short(location)!r}")
    check_path_text(location, field)
    return File(path=location, **extra)


def absolutize(value: Any, base: Path) -> Any:
    """A file value whose relative local path (string, `path` or `uri`) is made relative to `base` (the request
    file's folder, for the local runner); anything else, wrong types included, is returned unchanged."""

    def local(text: Any) -> bool:
        return isinstance(text, str) and bool(text) and not text.startswith("data:") and not _SCHEME.match(text)

    def rebase(text: str) -> str:
        return text if len(text) > MAX_PATH_CHARS or Path(text).is_absolute() else str(base / text)

    if local(value):
        return rebase(value)
    if isinstance(value, dict):
        key = "path" if value.get("path") else "uri"
        if local(value.get(key)):
            return {**value, key: rebase(value[key])}
    return value


def check_path_text(location: str, field: str) -> None:
    """InputError for a local path the OS cannot open at all (too long, a name too long, a NUL byte)."""
    if "\0" in location:
        raise InputError("invalid_path", field, "the path contains a NUL character")
    too_long_name = any(len(part.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES for part in Path(location).parts)
    if len(location) > MAX_PATH_CHARS or too_long_name:
        raise InputError(
            "path_too_long", field,
            f"is not a usable file path ({len(location)} characters; at most {MAX_PATH_CHARS}, {MAX_NAME_BYTES} bytes "
            "per name). Give a URL, a data URI or a shorter path",
        )  # fmt: skip


def check_local_file(file: File | None, field: str) -> Path:
    """The local path of a required input file, or an InputError naming the field (missing, empty, too large)."""
    if file is None:
        raise InputError("missing_input", field, "is required: give a URL or a file path")
    path = Path(file.path) if file.path else None
    try:
        found = path is not None and path.is_file()
    except (OSError, ValueError):  # a name too long or with a NUL byte, from a File built in Python
        found = False
    if path is None or not found:
        raise InputError("file_not_found", field, f"could not read {_short(file.uri or file.path or '')!r}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise InputError("empty_file", field, "the file is empty (0 bytes); upload the file again")
    if size > LIMITS.max_file_bytes:
        raise InputError("file_too_large", field, f"is {_gb(size)}; the limit is {_gb(LIMITS.max_file_bytes)}")
    return path


def cache_dir() -> Path:
    """This app's download cache: a folder of the SDK's (FILE_CACHE_DIR, which the engine expires by last use), apart
    from the SDK's own files so a truncated file the SDK once kept there is never picked up."""
    path = File.get_cache_dir() / "wan-animate"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _cache_path(key: str, name: str) -> Path:
    """cache_dir()/<sha256(key)[:16]>/<name>, the name reduced to safe characters."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)[-100:].lstrip(".") or "download"
    folder = cache_dir() / hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def decode_data_uri(uri: str, field: str) -> tuple[Path, str]:
    """A data URI (`data:video/mp4;base64,...`) written to a cached file, as the SDK decodes `uri`; returns (path,
    media type). Refused cleanly when it is malformed or decodes to more than the file size limit."""
    payload = uri.partition(",")[2]
    if len(payload) * 3 // 4 > LIMITS.max_file_bytes:
        raise InputError("file_too_large", field, f"the data URI holds over {_gb(LIMITS.max_file_bytes)}")
    try:
        media_type, ext, data = File._parse_data_uri(uri)  # the SDK's own parser (base64 or percent-encoded)
    except ValueError as error:
        raise InputError(
            "invalid_data_uri", field, f"could not decode the data URI ({error}); use data:<type>;base64,..."
        ) from None
    target = _cache_path("data:" + hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest(), f"file{ext}")
    if not target.is_file():
        tmp = _temp_name(target)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    return target, media_type


def download(url: str, field: str, limits: Any = None) -> Path:
    """The URL's content as a complete local file, downloaded once (a cached copy is complete by construction).

    Bounded by `limits.download_timeout_s` in all (each read by `download_stall_s`) and `max_file_bytes` (from
    Content-Length before the transfer, from the bytes received during it). The bytes go to a temp name renamed
    only when the transfer is complete (its size equal to Content-Length when the server sent one); a failed,
    refused or truncated transfer leaves nothing behind.
    """
    limits = limits or LIMITS
    parsed = urllib.parse.urlparse(url)
    target = _cache_path(url, os.path.basename(parsed.path) or "download")
    if target.is_file():
        os.utime(target)  # the engine expires cached inputs by last use
        return target
    deadline = time.monotonic() + limits.download_timeout_s
    tmp = _temp_name(target)
    request = urllib.request.Request(url, headers={"User-Agent": "wan-animate (inferencesh app)"})
    try:
        with urllib.request.urlopen(request, timeout=min(limits.download_stall_s, limits.download_timeout_s)) as response:
            length = _content_length(response)
            if length is not None and length > limits.max_file_bytes:
                raise InputError("file_too_large", field,
                                 f"{_short(url)} is {_gb(length)}; the limit is {_gb(limits.max_file_bytes)}")  # fmt: skip
            size = "size unknown" if length is None else _gb(length)
            logger.info("download for %s started: %s (%s, at most %.0f s)", field, _short(url), size,
                        limits.download_timeout_s)  # fmt: skip
            began = time.monotonic()
            received = 0
            with open(tmp, "wb") as out:
                while chunk := response.read1(CHUNK_BYTES):  # one socket read each: the deadline is checked often
                    received += len(chunk)
                    if received > limits.max_file_bytes:
                        raise InputError("file_too_large", field, f"{_short(url)} sent more than the limit of "
                                         f"{_gb(limits.max_file_bytes)}; the download was stopped")  # fmt: skip
                    if time.monotonic() > deadline:
                        raise _timeout(url, field, limits, received)
                    out.write(chunk)
            if length is not None and received != length:
                raise InputError("download_incomplete", field, f"{_short(url)} sent {received} of the {length} bytes "
                                 "it announced (connection cut); nothing was kept, try again")  # fmt: skip
        os.replace(tmp, target)
        logger.info("download for %s done: %s in %.1f s", field, _gb(received), time.monotonic() - began)
    except InputError:
        raise
    except urllib.error.HTTPError as error:
        raise InputError("download_failed", field, f"{_short(url)} answered HTTP {error.code} {error.reason}") from None
    except TimeoutError:
        raise _timeout(url, field, limits, None) from None
    except http.client.IncompleteRead as error:
        raise InputError("download_incomplete", field, f"{_short(url)} ended early ({len(error.partial)} bytes "
                         "in the last chunk); nothing was kept, try again") from None  # fmt: skip
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError):
            raise _timeout(url, field, limits, None) from None
        raise InputError("download_failed", field, f"could not fetch {_short(url)}: {reason}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _timeout(url: str, field: str, limits: Any, received: int | None) -> InputError:
    got = "" if received is None else f" after {received} bytes"
    return InputError(
        "download_timeout", field,
        f"{_short(url)} did not arrive within {limits.download_timeout_s:g} s (or stalled for "
        f"{limits.download_stall_s:g} s){got}; host it somewhere faster or upload the file",
    )  # fmt: skip


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.part")


def _short(text: str, limit: int = 120) -> str:
    """A URL or path for an error message: without the query (signed URLs carry tokens), at most `limit` chars."""
    if is_url(text):
        text = urllib.parse.urlparse(text)._replace(query="", fragment="").geturl()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 100_000_000 else f"{size} bytes"


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object", str: "a string"}
    return names.get(type(value), type(value).__name__)
