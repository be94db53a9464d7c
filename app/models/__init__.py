"""Data model: one module per aggregate."""
from .audit import AuditEvent
from .credentials import Credential, Flow
from .mcp_sessions import McpSession
from .mcp_streams import McpSessionEvent, McpUpstreamSession
from .oauth import OAuthClient, OAuthCode, OAuthConsent, OAuthRefreshToken, SigningKey
from .keys import VirtualKey, VirtualKeyServerGrant, VirtualKeyServiceGrant
from .servers import McpServer
from .services import Service
from .upstream_oauth import UpstreamOAuth
from .users import ApiToken, Login, User

__all__ = [
    "ApiToken", "AuditEvent", "Credential", "Flow", "Login", "McpServer", "McpSession", "McpSessionEvent", "McpUpstreamSession", "OAuthClient", "OAuthCode",
    "OAuthConsent", "OAuthRefreshToken", "Service", "SigningKey", "UpstreamOAuth", "User",
    "VirtualKey", "VirtualKeyServerGrant", "VirtualKeyServiceGrant",
]
