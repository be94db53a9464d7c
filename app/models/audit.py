"""The audit log: who did what to which object. Never holds a secret."""
from __future__ import annotations

from ..extensions import db
from .base import iso, utcnow


class AuditEvent(db.Model):
    __tablename__ = "audit_events"

    id = db.Column(db.Integer, primary_key=True)
    created_at = db.Column(db.DateTime, nullable=False, default=utcnow, index=True)
    actor_type = db.Column(db.String(16), nullable=False)  # user | virtual_key | system
    actor_id = db.Column(db.Integer)
    actor = db.Column(db.String(254), nullable=False, default="")  # e-mail or key name, kept after deletion
    action = db.Column(db.String(64), nullable=False, index=True)
    target_type = db.Column(db.String(32))
    target_id = db.Column(db.Integer)
    target = db.Column(db.String(254), nullable=False, default="")
    detail = db.Column(db.String(500), nullable=False, default="")
    ip = db.Column(db.String(64))
    request_id = db.Column(db.String(128), index=True)  # the request that made the change (app/logs.py)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "created_at": iso(self.created_at),
            "actor": {"type": self.actor_type, "id": self.actor_id, "name": self.actor},
            "action": self.action,
            "target": {"type": self.target_type, "id": self.target_id, "name": self.target},
            "detail": self.detail, "ip": self.ip, "request_id": self.request_id,
        }
