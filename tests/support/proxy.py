"""Fixtures and helpers for the proxy tests: a real HTTP upstream that echoes what it received
(tests/upstream/http_echo.py, started once per session), services and keys made through the
ops layer as the API would. tests/conftest.py loads the fixtures here for every test."""
from __future__ import annotations

from datetime import datetime

import pytest

from app.extensions import db

ROOT_SECRET = "root-secret-7c1d0e"


@pytest.fixture(scope="session")
def echo():
    from tests.upstream import http_echo

    server, url = http_echo.start()
    yield url
    server.shutdown()


def add_service(app, name: str, base_url: str, secret: str = ROOT_SECRET, **fields) -> int:
    from app.ops.services import create_service

    with app.app_context():
        service = create_service({"name": name, "base_url": base_url, "secret": secret, **fields})
        db.session.commit()
        return service.id


def add_proxy_key(app, services: dict, source: str = "api", **fields) -> tuple[int, str]:
    """A virtual key; services is {service_id: scope}."""
    from app.ops.keys import create_key

    data = {"name": fields.pop("name", "agent"), **fields,
            "services": [{"service_id": sid, "scope": scope} for sid, scope in services.items()]}
    with app.app_context():
        key, secret = create_key(data, source=source)
        db.session.commit()
        return key.id, secret


def set_key(app, key_id: int, **values) -> None:
    """Change a key's columns directly (e.g. an expiry in the past, which the ops layer refuses)."""
    from app.models import VirtualKey

    with app.app_context():
        key = db.session.get(VirtualKey, key_id)
        for k, v in values.items():
            setattr(key, k, v)
        db.session.commit()


def key_row(app, key_id: int) -> dict:
    from app.models import VirtualKey

    with app.app_context():
        key = db.session.get(VirtualKey, key_id)
        return {**key.to_dict(), "last_used_at": key.last_used_at, "updated_at": key.updated_at}


def seen_headers(answer: dict) -> dict[str, list[str]]:
    """The echo upstream's view of the request headers: lower-case name -> values."""
    out: dict[str, list[str]] = {}
    for name, value in answer["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


def naive_utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso.rstrip("Z"))
