"""A binding: ``(auth_mode, identity, mcp_server)``, what one credential and at most one pending
flow belong to. ``user`` (identity = user id), ``vk`` (virtual key id), ``session`` (MCP
session id, anonymous development mode only)."""
from __future__ import annotations

from dataclasses import dataclass

from ..models.credentials import IDENTITY_COLUMN


@dataclass(frozen=True)
class Binding:
    auth_mode: str
    identity: int | str
    server_id: int

    @property
    def column(self) -> str:
        return IDENTITY_COLUMN[self.auth_mode]

    def where(self, model) -> tuple:
        """The WHERE clauses that select this binding's rows of Credential or Flow."""
        return (model.auth_mode == self.auth_mode, getattr(model, self.column) == self.identity,
                model.mcp_server_id == self.server_id)

    @classmethod
    def of(cls, row) -> Binding:
        """The binding of a Credential or Flow row."""
        return cls(row.auth_mode, getattr(row, IDENTITY_COLUMN[row.auth_mode]), row.mcp_server_id)


def binding_of(caller, server_id: int) -> Binding | None:
    """The caller's binding for a server (identity.Caller decides the mode); None for an
    anonymous caller that has no MCP session yet."""
    identity = caller.identity
    return None if identity is None else Binding(caller.mode, identity, server_id)
