"""Encryption at rest.

Every secret column uses one of the two SQLAlchemy types below; they store Fernet tokens
(AES-128-CBC + HMAC-SHA256, authenticated). ``PORTCULLIS_ENCRYPTION_KEY`` lists keys
comma-separated: the first encrypts, all decrypt, so a key is rotated by putting a new one
first and running ``flask rotate-encryption-key`` (re-encrypts every row) before removing
the old one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import Text, select, type_coerce, update
from sqlalchemy.types import TypeDecorator


class DecryptionError(RuntimeError):
    """A stored value cannot be decrypted with any configured key."""

    def __init__(self, column: str):
        self.column = column
        super().__init__(
            f"cannot decrypt {column}: it was encrypted with a key that is not in "
            "PORTCULLIS_ENCRYPTION_KEY (add the old key back after the new one, then run "
            "'flask --app wsgi rotate-encryption-key')"
        )


class Keyring:
    """One app's keys (``app.extensions["keyring"]``), built by create_app()."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise RuntimeError("PORTCULLIS_ENCRYPTION_KEY is empty")
        try:
            fernets = [Fernet(k.encode()) for k in keys]
        except (ValueError, TypeError):
            raise RuntimeError(
                "PORTCULLIS_ENCRYPTION_KEY must be comma-separated Fernet keys (32 url-safe "
                "base64 bytes each; make one with: python -c 'from cryptography.fernet import "
                "Fernet; print(Fernet.generate_key().decode())')"
            ) from None
        self.primary, self.fernet = fernets[0], MultiFernet(fernets)

    def encrypt(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str, column: str) -> str:
        try:
            return self.fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError(column) from None

    def is_current(self, token: str) -> bool:
        try:
            self.primary.decrypt(token.encode())
            return True
        except InvalidToken:
            return False

    def rotate(self, token: str, column: str) -> str:
        try:
            return self.fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise DecryptionError(column) from None


def keyring() -> Keyring:
    return current_app.extensions["keyring"]


class EncryptedText(TypeDecorator):
    """A str stored encrypted. ``label`` names the column in error messages."""

    impl = Text
    cache_ok = True

    def __init__(self, label: str = "encrypted column", **kw):
        super().__init__(**kw)
        self.label = label

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return keyring().encrypt(self._dump(value))

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return self._load(keyring().decrypt(value, self.label))

    def _dump(self, value):
        if not isinstance(value, str):
            raise TypeError(f"{self.label} takes a str")
        return value

    def _load(self, text):
        return text


class EncryptedJSON(EncryptedText):
    """A JSON value (dict/list) stored encrypted as one token."""

    cache_ok = True

    def _dump(self, value):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)

    def _load(self, text):
        return json.loads(text)


@dataclass
class RotationReport:
    column: str
    rows: int = 0
    rotated: int = 0
    current: int = 0
    failed: int = 0


def encrypted_columns(metadata):
    for table in metadata.sorted_tables:
        for col in table.columns:
            if isinstance(col.type, EncryptedText):
                yield table, col


def rotate_all(session, metadata) -> list[RotationReport]:
    """Re-encrypt under the first key every value that another key encrypted.

    Works on the raw tokens (type_coerce to Text skips the column type), so plaintexts are
    never re-serialised. Values no configured key can read are counted as failed and left
    untouched; the caller commits once at the end.
    """
    ring = keyring()
    reports = []
    for table, col in encrypted_columns(metadata):
        pk = list(table.primary_key.columns)[0]
        report = RotationReport(column=f"{table.name}.{col.name}")
        rows = session.execute(select(pk, type_coerce(col, Text)).where(col.isnot(None))).all()
        for row_id, token in rows:
            report.rows += 1
            if ring.is_current(token):
                report.current += 1
                continue
            try:
                new = ring.rotate(token, report.column)
            except DecryptionError:
                report.failed += 1
                continue
            session.execute(update(table).where(pk == row_id).values({col.name: type_coerce(new, Text)}))
            report.rotated += 1
        reports.append(report)
    return reports
