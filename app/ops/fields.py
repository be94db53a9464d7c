"""A small, strict reader for input dicts (JSON bodies, or forms turned into dicts).

Collects every field error before failing so a form can show them all at once. Unknown
fields are refused: a typo must not silently do nothing.
"""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from urllib.parse import urlsplit

from ..models.base import MAX_ID
from .errors import BadRequest, Invalid

# The limits of what is accepted, in one place (the OpenAPI document takes them from here).
MAX_NAME = 40  # server and service names
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,%d}$" % (MAX_NAME - 1))
MAX_URL = 2048
MAX_HEADER_NAME = 64
# RFC 9110 token characters
HEADER_NAME_RE = re.compile(r"^[!#$%%&'*+\-.^_`|~0-9A-Za-z]{1,%d}$" % MAX_HEADER_NAME)
MAX_HEADER_VALUE = 8192
# RFC 9110 field-value in ASCII: visible characters, spaces and tabs only between them. The HTTP
# client sends nothing else (a line break, 'é' or a leading space fails at the upstream call).
HEADER_VALUE_RE = re.compile(r"[\x21-\x7e]+(?:[ \t]+[\x21-\x7e]+)*")
HEADER_VALUE_RULE = (f"must be printable ASCII (letters, digits, punctuation; spaces or tabs only between them), "
                     f"at most {MAX_HEADER_VALUE} characters: an HTTP header cannot carry anything else")


def header_value_ok(value) -> bool:
    """A value that can be sent in an HTTP header as typed (shared headers, sample values and each
    person's own values alike); refused ones are named with HEADER_VALUE_RULE, never echoed."""
    return isinstance(value, str) and len(value) <= MAX_HEADER_VALUE and HEADER_VALUE_RE.fullmatch(value) is not None


MAX_JSON_DEPTH = 64
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")


class JsonRefused(ValueError):
    """A client's body that is not JSON, nested too deeply or unstorable text; the message says which."""


def parse_json(data: bytes):
    """The JSON value a client sent (the API's bodies, /mcp's messages), in UTF-8 (RFC 8259).

    Refused: text with an unpaired surrogate escape (``"\\ud800"``), which no database or
    encoder takes; more than MAX_JSON_DEPTH levels of arrays and objects, since the decoder
    recurses per level (a few thousand were a RecursionError) and so does whatever handles the
    value later, such as the encoder that forwards tool arguments. A body with fewer brackets than
    that cannot be deeper, and one without a surrogate escape has no such text: the common, small
    case costs two scans."""
    try:
        text = data.decode("utf-8")
        value = json.loads(text)
    except RecursionError:
        raise JsonRefused(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # also UnicodeDecodeError
        raise JsonRefused("not valid JSON") from None
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        stack = [(value, 1)]
        while stack:
            node, depth = stack.pop()
            if isinstance(node, dict):
                node = node.values()
            elif not isinstance(node, list):
                continue
            if depth > MAX_JSON_DEPTH:
                raise JsonRefused(f"nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in node)
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise JsonRefused("not valid JSON: a \\u escape of an unpaired surrogate (D800-DFFF)") from None
    return value


_MISSING = object()
MAX_QUERY = 200  # search text: longer than any name; SQLite refuses LIKE patterns over 50 000 bytes


def valid_id(value) -> bool:
    """An int that can be an id; larger ones would overflow the database driver (SQLite)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID


class Fields:
    def __init__(self, data, allowed: set[str], partial: bool = False):
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        self.data = data
        self.partial = partial
        self.errors: dict[str, str] = {}
        for key in data:
            if key not in allowed:
                self.errors[key] = "unknown field"

    def has(self, name: str) -> bool:
        return name in self.data

    def fail(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    def done(self) -> None:
        if self.errors:
            first = next(iter(self.errors.items()))
            raise Invalid(f"invalid {first[0]}: {first[1]}", self.errors)

    def _get(self, name, required):
        if name not in self.data:
            if required and not self.partial:
                self.fail(name, "is required")
            return _MISSING
        return self.data[name]

    def string(self, name, *, required=False, max_len=255, min_len=0, nullable=False, strip=True):
        v = self._get(name, required)
        if v is _MISSING:
            return _MISSING
        if v is None and nullable:
            return None
        if not isinstance(v, str):
            self.fail(name, "must be a string")
            return _MISSING
        if strip:
            v = v.strip()
        if len(v) < max(min_len, 1 if required else 0):
            self.fail(name, "must not be empty")
            return _MISSING
        if len(v) > max_len:
            self.fail(name, f"must be at most {max_len} characters")
            return _MISSING
        if any(c in v for c in "\r\n\x00"):
            self.fail(name, "must not contain line breaks or NUL")
            return _MISSING
        return v

    def name(self, name="name", *, required=True):
        v = self.string(name, required=required, max_len=MAX_NAME)
        if v is not _MISSING and not NAME_RE.match(v):
            self.fail(name, "must match ^[a-z][a-z0-9-]{0,39}$ (lower-case letters, digits, dashes)")
            return _MISSING
        return v

    def url(self, name, *, required=True):
        v = self.string(name, required=required, max_len=MAX_URL)
        if v is _MISSING:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(name, "must be an http:// or https:// URL")
            return _MISSING
        if parts.username or parts.password:
            self.fail(name, "must not carry credentials; use headers or the secret instead")
            return _MISSING
        return v

    def boolean(self, name, *, required=False):
        v = self._get(name, required)
        if v is _MISSING:
            return v
        if not isinstance(v, bool):
            self.fail(name, "must be true or false")
            return _MISSING
        return v

    def integer(self, name, *, required=False, lo=None, hi=None, nullable=False):
        v = self._get(name, required)
        if v is _MISSING or (v is None and nullable):
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail(name, "must be an integer")
            return _MISSING
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(name, f"must be between {lo} and {hi}")
            return _MISSING
        return v

    def number(self, name, *, required=False, lo=None, hi=None):
        v = self._get(name, required)
        if v is _MISSING:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
            self.fail(name, "must be a number")
            return _MISSING
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(name, f"must be between {lo:g} and {hi:g}")
            return _MISSING
        return float(v)

    def choice(self, name, choices, *, required=False):
        v = self._get(name, required)
        if v is _MISSING:
            return v
        if v not in choices:
            self.fail(name, "must be one of " + ", ".join(choices))
            return _MISSING
        return v

    def future_datetime(self, name, now: datetime):
        v = self._get(name, False)
        if v is _MISSING or v is None:
            return v
        parsed = parse_datetime(v)
        if parsed is None:
            self.fail(name, "must be an ISO 8601 date-time such as 2030-01-31T12:00:00Z")
            return _MISSING
        if parsed <= now:
            self.fail(name, "must be in the future")
            return _MISSING
        return parsed


def parse_datetime(value) -> datetime | None:
    """ISO 8601 -> naive UTC; a value without offset is taken as UTC."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
        if dt.tzinfo is not None:
            dt = dt.astimezone(UTC).replace(tzinfo=None)
    except (ValueError, OverflowError):  # OverflowError: the offset leaves years 1..9999
        return None
    return dt


def missing(value) -> bool:
    return value is _MISSING
