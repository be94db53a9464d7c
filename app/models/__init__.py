"""Data model: one module per aggregate."""
from .audit import AuditEvent
from .keys import VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant
from .servers import McpServer
from .services import Service
from .users import ApiToken, DashboardSession, User

__all__ = [
    "ApiToken", "AuditEvent", "DashboardSession", "McpServer", "Service", "User",
    "VirtualKey", "VirtualKeyServerGrant", "VirtualKeyServiceGrant",
]
