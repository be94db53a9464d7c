"""Credentials for an upstream call: one resolver per auth_type.

A resolver turns (server, caller) into the headers sent upstream, or raises
``CredentialUnavailable`` with a message for the agent. Shared types (``none``, ``headers``)
are served from the snapshot without touching the database or decrypting anything.
"""
from __future__ import annotations

from typing import Callable

from ..identity import Caller
from ..snapshot import ServerView


class CredentialUnavailable(Exception):
    """No usable credential for this call; ``str()`` is safe to show the agent."""


def _none(server: ServerView, caller: Caller):
    return server.shared_endpoint


def _shared_headers(server: ServerView, caller: Caller):
    return server.shared_endpoint


def _not_connectable(server: ServerView, caller: Caller):
    raise CredentialUnavailable(
        f"{server.name}: this server uses {server.auth_type} credentials, which this Portcullis "
        "version cannot supply yet")


RESOLVERS: dict[str, Callable] = {
    "none": _none,
    "headers": _shared_headers,
    "oauth": _not_connectable,
    "per_user_headers": _not_connectable,
    "per_user_oauth": _not_connectable,
}


def endpoint_for(server: ServerView, caller: Caller):
    """The upstream endpoint (URL + headers + timeouts) to use for this caller."""
    return RESOLVERS[server.auth_type](server, caller)
