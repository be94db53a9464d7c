"""Users: create, change, delete. The last active admin can never be removed."""
from __future__ import annotations

import re

from sqlalchemy import func, select

from ..audit import record
from ..extensions import db
from ..models import ApiToken, Login, User
from ..models.base import utcnow
from ..models.users import ROLES
from .errors import Conflict, Invalid, NotFound
from .fields import Fields, missing, valid_id

EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
MIN_PASSWORD = 10
MAX_PASSWORD = 200
MAX_EMAIL = 254


def get_user(user_id: int) -> User:
    user = db.session.get(User, user_id) if valid_id(user_id) else None
    if user is None:
        raise NotFound("no such user")
    return user


def _email(f: Fields, required: bool):
    v = f.string("email", required=required, max_len=MAX_EMAIL)
    if missing(v):
        return v
    v = v.lower()
    if not EMAIL_RE.match(v):
        f.fail("email", "must be an e-mail address")
    return v


def _password(f: Fields, required: bool, name: str = "password"):
    v = f.string(name, required=required, max_len=MAX_PASSWORD, strip=False)
    if not missing(v) and len(v) < MIN_PASSWORD:
        f.fail(name, f"must be at least {MIN_PASSWORD} characters")
    return v


def _email_taken(email: str, except_id: int | None = None) -> bool:
    q = select(User.id).where(User.email == email)
    if except_id is not None:
        q = q.where(User.id != except_id)
    return db.session.scalar(q) is not None


def create_user(data: dict) -> User:
    f = Fields(data, {"email", "password", "role", "active"})
    email = _email(f, True)
    password = _password(f, True)
    role = f.choice("role", ROLES)
    active = f.boolean("active")
    f.done()
    if _email_taken(email):
        raise Conflict("a user with this e-mail exists", {"email": "is already taken"})
    user = User(email=email, role="member" if missing(role) else role,
                active=True if missing(active) else active)
    user.set_password(password)
    db.session.add(user)
    db.session.flush()
    record("user.create", user, f"role={user.role}")
    return user


def active_admins_besides(user: User) -> int:
    return db.session.scalar(
        select(func.count(User.id)).where(User.role == "admin", User.active.is_(True), User.id != user.id))


def update_user(user: User, data: dict) -> User:
    f = Fields(data, {"email", "password", "role", "active"}, partial=True)
    email = _email(f, False)
    password = _password(f, False)
    role = f.choice("role", ROLES)
    active = f.boolean("active")
    f.done()
    changes = []
    if not missing(email) and email != user.email:
        if _email_taken(email, user.id):
            raise Conflict("a user with this e-mail exists", {"email": "is already taken"})
        user.email = email
        changes.append("email")
    loses_admin = (not missing(role) and role != "admin") or (not missing(active) and not active)
    if user.is_admin and user.active and loses_admin and active_admins_besides(user) == 0:
        raise Conflict("the last active admin cannot be demoted or deactivated")
    if not missing(role) and role != user.role:
        user.role = role
        changes.append(f"role={role}")
        end_logins(user)
    if not missing(active) and active != user.active:
        user.active = active
        changes.append(f"active={active}")
        if not active:
            end_logins(user)
    if not missing(password):
        user.set_password(password)
        user.must_change_password = False
        changes.append("password")
        end_logins(user)
    if changes:
        record("user.update", user, ", ".join(changes))
    return user


def delete_user(user: User) -> None:
    if user.is_admin and user.active and active_admins_besides(user) == 0:
        raise Conflict("the last active admin cannot be deleted")
    record("user.delete", user)
    db.session.delete(user)


def end_logins(user: User, keep: Login | None = None) -> None:
    """End every login of a user, dashboard sessions and API tokens alike, and the OAuth refresh
    tokens issued under them, whenever what they were granted for changes: a password change or
    reset, deactivation, a role change (deletion cascades). ``keep`` is the dashboard session
    making the change, when it stays logged in."""
    if user.id is None:
        return  # not stored yet: nothing was issued to it
    from ..oauth_server.consents import end_refresh_tokens

    end_refresh_tokens(user_id=user.id)
    now = utcnow()
    sessions = db.update(Login).where(Login.user_id == user.id,
                                                 Login.revoked_at.is_(None))
    if keep is not None and keep.id is not None:
        sessions = sessions.where(Login.id != keep.id)
    db.session.execute(sessions.values(revoked_at=now))
    db.session.execute(db.update(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                       .values(revoked_at=now))


def ensure_admin(email: str, password: str | None) -> tuple[User, str | None]:
    """Make sure an active admin exists. Returns (admin, generated password or None).

    With no active admin: creates (or promotes) ``email``; without a given password one is
    generated and must be changed at first login.
    """
    import secrets

    admins = db.session.scalars(select(User).where(User.role == "admin", User.active.is_(True))).all()
    if any(not a.must_change_password for a in admins):
        return next(a for a in admins if not a.must_change_password), None
    if admins and not password:
        # The bootstrap admin never logged in: its one-time password was lost with the
        # previous start's output, so issue a fresh one instead of locking everyone out.
        user = admins[0]
        generated = secrets.token_urlsafe(12)
        user.set_password(generated)
        end_logins(user)
        record("user.bootstrap_admin", user, "new one-time password")
        return user, generated
    generated = None
    if not password:
        generated = password = secrets.token_urlsafe(12)
    user = db.session.scalar(select(User).where(User.email == email.lower()))
    if user is None:
        user = User(email=email.lower())
        db.session.add(user)
    user.role, user.active = "admin", True
    user.set_password(password)
    user.must_change_password = generated is not None
    end_logins(user)  # an existing user promoted and given a new password
    db.session.flush()
    record("user.bootstrap_admin", user, "generated password" if generated else "password from environment")
    return user, generated


def validate_new_password(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid("password too short", {"password": f"must be at least {MIN_PASSWORD} characters"})
