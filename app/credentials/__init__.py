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


class AuthRequired(CredentialUnavailable):
    """The caller's binding has no usable credential: the answer tells the agent which URL its
    person opens (a pending flow was started or refreshed). ``str()`` is the text for a person."""

    def __init__(self, kind: str, server: str, flow_id: str, submit_url: str, required: list[str],
                 stored: list[str], reason: str):
        self.kind, self.server, self.flow_id, self.submit_url = kind, server, flow_id, submit_url
        self.required, self.stored, self.reason = required, stored, reason
        super().__init__(
            f"Authentication required: {server} needs your own API credentials ({reason}). "
            f"Ask the person you work for to open {submit_url} , enter the requested header values "
            f"({', '.join(required)}), then retry this call. The link is valid for 15 minutes.")

    @property
    def meta(self) -> dict:
        return {"kind": self.kind, "server": self.server, "flow_id": self.flow_id, "submit_url": self.submit_url,
                "required_header_keys": list(self.required), "stored_header_keys": list(self.stored)}

    def tool_result(self) -> dict:
        """For clients without URL-mode elicitation: an isError tool result with the details
        under ``_meta["portcullis/auth_required"]``."""
        return {"content": [{"type": "text", "text": str(self)}], "isError": True,
                "_meta": {"portcullis/auth_required": self.meta}}

    def rpc_error(self) -> dict:
        """For clients that declared ``capabilities.elicitation.url`` (MCP 2025-11-25): -32042
        URLElicitationRequiredError with one URL-mode elicitation."""
        return {"code": URL_ELICITATION_REQUIRED, "message": "URL elicitation required: " + str(self),
                "data": {"elicitations": [{"mode": "url", "elicitationId": self.flow_id, "url": self.submit_url,
                                           "message": str(self)}]}}


URL_ELICITATION_REQUIRED = -32042


def wants_url_elicitation(session) -> bool:
    """Did the client declare URL-mode elicitation in initialize?"""
    caps = getattr(session, "capabilities", None) or {}
    elicitation = caps.get("elicitation") if isinstance(caps, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)


def _none(server: ServerView, caller: Caller, session=None):
    return server.shared_endpoint


def _shared_headers(server: ServerView, caller: Caller, session=None):
    return server.shared_endpoint


def _per_user_headers(server: ServerView, caller: Caller, session=None):
    from . import per_user_headers as puh

    binding = puh.binding_for(server.id, caller, session)
    if binding is None:
        raise CredentialUnavailable(
            f"{server.name}: per-user credentials are bound to an MCP session; initialize one first")
    view = puh.stored(server, binding)
    if view.endpoint is not None:
        return view.endpoint
    required = list(server.per_user_header_keys)
    stored = sorted(k for k in view.values if k in required)
    if view.status is None:
        reason = "none stored yet"
    elif view.status == "needs_update":
        reason = "the server's required headers changed"
    elif view.status != "active":
        reason = f"the stored credential is {view.status}"
    else:
        reason = "a required header is missing: " + ", ".join(k for k in required if k not in stored)
    flow_id, token = puh.start_flow(binding)
    raise AuthRequired("headers", server.name, flow_id, puh.submit_url(flow_id, token), required, stored, reason)


def _not_connectable(server: ServerView, caller: Caller, session=None):
    raise CredentialUnavailable(
        f"{server.name}: this server uses {server.auth_type} credentials, which this Portcullis "
        "version cannot supply yet")


RESOLVERS: dict[str, Callable] = {
    "none": _none,
    "headers": _shared_headers,
    "oauth": _not_connectable,
    "per_user_headers": _per_user_headers,
    "per_user_oauth": _not_connectable,
}


def endpoint_for(server: ServerView, caller: Caller, session=None):
    """The upstream endpoint (URL + headers + timeouts) to use for this caller (``session``: the
    caller's MCP session, the binding of anonymous development callers). Raises
    ``AuthRequired`` when the caller must submit credentials first."""
    return RESOLVERS[server.auth_type](server, caller, session)
