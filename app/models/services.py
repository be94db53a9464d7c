"""Upstream HTTP APIs reached through the proxy route with a root credential."""
from __future__ import annotations

from ..crypto import EncryptedText
from ..extensions import db
from .base import iso, utcnow


def credential_pair(header: str, secret: str) -> tuple[str, str]:
    """The (header, value) pair the proxy injects: ``Authorization`` carries ``Bearer <secret>``,
    any other header the secret as is."""
    if header.lower() == "authorization":
        return "Authorization", f"Bearer {secret}"
    return header, secret


class Service(db.Model):
    __tablename__ = "services"

    id = db.Column(db.Integer, primary_key=True)
    name = db.Column(db.String(40), nullable=False, unique=True)
    description = db.Column(db.String(500), nullable=False, default="")
    base_url = db.Column(db.String(2048), nullable=False)
    # X-API-Key (default), Authorization (sent as "Bearer <secret>"), or any header taken literally.
    credential_header = db.Column(db.String(64), nullable=False, default="X-API-Key")
    secret = db.Column(EncryptedText("services.secret"), nullable=False)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow)
    updated_at = db.Column(db.DateTime, nullable=False, default=utcnow, onupdate=utcnow)

    def credential(self) -> tuple[str, str]:
        """The (header, value) pair the proxy injects."""
        return credential_pair(self.credential_header, self.secret)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "name": self.name, "description": self.description,
            "base_url": self.base_url, "credential_header": self.credential_header,
            "secret_set": bool(self.secret),
            "created_at": iso(self.created_at), "updated_at": iso(self.updated_at),
        }
