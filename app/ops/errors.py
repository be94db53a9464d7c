"""Errors raised by operations; the API and the pages render them (JSON or inline form errors)."""
from __future__ import annotations


class OpError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def to_dict(self) -> dict:
        err = {"code": self.code, "message": self.message}
        if self.fields:
            err["fields"] = self.fields
        return {"error": err}


class BadRequest(OpError):
    status, code = 400, "bad_request"


class Invalid(OpError):
    status, code = 422, "validation_failed"


class NotFound(OpError):
    status, code = 404, "not_found"


class Conflict(OpError):
    status, code = 409, "conflict"


class Forbidden(OpError):
    status, code = 403, "forbidden"
