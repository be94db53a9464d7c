"""What a tool call gets when its caller has no usable credential for the server."""
from __future__ import annotations

URL_ELICITATION_REQUIRED = -32042


class CredentialUnavailable(Exception):
    """No usable credential for this call; ``str()`` is safe to show the agent."""


class SecretNotSet(CredentialUnavailable):
    """A service whose secret was never set (imported by `flask import`, which carries no
    secret): nothing is sent upstream until an admin sets it."""


class SignInAgain(Exception):
    """The session gate: a user-mode OAuth token may call tools with stored credentials, but
    starting a flow that asks its person for new ones needs the dashboard login that consented
    to be active still. The client must sign in again (HTTP 401, ``invalid_token``)."""

    def __init__(self):
        super().__init__("the sign-in session that authorized this token has ended; sign in again")


class AuthRequired(CredentialUnavailable):
    """The caller's binding has no usable credential: the answer tells the agent which URL its
    person opens (a pending flow was started or refreshed). ``str()`` is the text for a person."""

    def __init__(self, kind: str, server: str, flow_id: str, submit_url: str, required: list[str],
                 stored: list[str], reason: str):
        self.kind, self.server, self.flow_id, self.submit_url = kind, server, flow_id, submit_url
        self.required, self.stored, self.reason = required, stored, reason
        if kind == "oauth":
            text = (f"Authentication required: {server} needs you to connect your own account ({reason}). "
                    f"Ask the person you work for to open {submit_url} , sign in at {server} and allow access, "
                    "then retry this call. The link is valid for 15 minutes.")
        else:
            text = (f"Authentication required: {server} needs your own API credentials ({reason}). "
                    f"Ask the person you work for to open {submit_url} , enter the requested header values "
                    f"({', '.join(required)}), then retry this call. The link is valid for 15 minutes.")
        super().__init__(text)

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


def wants_url_elicitation(session) -> bool:
    """Did the client declare URL-mode elicitation in initialize?"""
    caps = getattr(session, "capabilities", None) or {}
    elicitation = caps.get("elicitation") if isinstance(caps, dict) else None
    return isinstance(elicitation, dict) and isinstance(elicitation.get("url"), dict)
