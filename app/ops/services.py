"""HTTP services for the proxy route. The root secret is write-only."""
from __future__ import annotations

from sqlalchemy import select

from ..audit import record
from ..extensions import db
from ..models import Service
from .errors import Conflict, NotFound
from .fields import HEADER_NAME_RE, MAX_HEADER_NAME, MAX_HEADER_VALUE, Fields, missing, valid_id
from .servers import RESERVED_HEADERS

FIELDS = {"name", "description", "base_url", "credential_header", "secret"}
MAX_DESCRIPTION = 500


def get_service(service_id: int) -> Service:
    service = db.session.get(Service, service_id) if valid_id(service_id) else None
    if service is None:
        raise NotFound("no such service")
    return service


def _read(f: Fields, creating: bool):
    values = {
        "name": f.name(required=creating),
        "description": f.string("description", max_len=MAX_DESCRIPTION),
        "base_url": f.url("base_url", required=creating),
        "credential_header": f.string("credential_header", max_len=MAX_HEADER_NAME),
        "secret": f.string("secret", required=creating, max_len=MAX_HEADER_VALUE, strip=False),
    }
    header = values["credential_header"]
    if not missing(header):
        if not HEADER_NAME_RE.match(header):
            f.fail("credential_header", "must be a valid header name")
        elif header.lower() in RESERVED_HEADERS:
            f.fail("credential_header", f"{header} cannot carry a credential")
    secret = values["secret"]
    if not missing(secret) and not secret.strip():
        f.fail("secret", "must not be empty")
    f.done()
    return {k: v for k, v in values.items() if not missing(v)}


def _name_taken(name: str, except_id: int | None = None) -> bool:
    q = select(Service.id).where(Service.name == name)
    if except_id is not None:
        q = q.where(Service.id != except_id)
    return db.session.scalar(q) is not None


def create_service(data: dict) -> Service:
    values = _read(Fields(data, FIELDS), creating=True)
    if _name_taken(values["name"]):
        raise Conflict("a service with this name exists", {"name": "is already taken"})
    values.setdefault("credential_header", "X-API-Key")
    service = Service(**values)
    db.session.add(service)
    db.session.flush()
    record("service.create", service, f"credential_header={service.credential_header}")
    return service


def update_service(service: Service, data: dict) -> Service:
    values = _read(Fields(data, FIELDS, partial=True), creating=False)
    if "name" in values and values["name"] != service.name and _name_taken(values["name"], service.id):
        raise Conflict("a service with this name exists", {"name": "is already taken"})
    changed = []
    for attr, value in values.items():
        if getattr(service, attr) != value:
            setattr(service, attr, value)
            changed.append(attr)
    if changed:
        record("service.update", service, "changed " + ", ".join(changed))
    return service


def delete_service(service: Service) -> None:
    record("service.delete", service)
    db.session.delete(service)
