"""The credentials and flows tables: one row per binding (database-enforced), cascades, encryption."""
from datetime import timedelta

import pytest
from sqlalchemy import Text, select, text, type_coerce
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Credential, Flow, McpServer, McpSession, User, VirtualKey, VirtualKeyServerGrant
from app.models.base import utcnow

from tests.conftest import make_user

CANARY = "canary-5f1d-secret-value"


@pytest.fixture
def world(app, ctx):
    uid = make_user(app, "m@example.com")
    server = McpServer(name="srv", url="http://127.0.0.1:1/mcp", auth_type="per_user_headers",
                       per_user_header_keys=["x-api-key"], tools=[])
    key, _ = VirtualKey.generate(name="k")
    own, _ = VirtualKey.generate(name="own", owner_id=uid)  # the user binding's access
    db.session.add_all([server, key, own])
    db.session.flush()
    db.session.add_all([VirtualKeyServerGrant(virtual_key_id=k.id, mcp_server_id=server.id) for k in (key, own)])
    sess = McpSession(id="s" * 64, virtual_key_id=None, principal="anonymous", protocol_version="2025-11-25")
    db.session.add(sess)
    db.session.commit()
    return {"user": uid, "server": server.id, "vk": key.id, "session": sess.id}


def cred(world, mode, **kw):
    col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}[mode]
    return Credential(auth_mode=mode, mcp_server_id=world["server"], **{col: world[mode]},
                      values={"x-api-key": CANARY}, header_keys=["x-api-key"], **kw)


def flow(world, mode, fid, status="pending"):
    col = {"user": "user_id", "vk": "virtual_key_id", "session": "session_id"}[mode]
    return Flow(id=fid, auth_mode=mode, mcp_server_id=world["server"], **{col: world[mode]}, status=status,
                expires_at=utcnow() + timedelta(minutes=15))


@pytest.mark.parametrize("mode", ["user", "vk", "session"])
def test_one_credential_per_binding(world, mode):
    db.session.add(cred(world, mode))
    db.session.commit()
    db.session.add(cred(world, mode))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_one_binding_per_mode_does_not_block_other_modes(world):
    db.session.add_all([cred(world, m) for m in ("user", "vk", "session")])
    db.session.commit()
    assert db.session.scalar(select(db.func.count()).select_from(Credential)) == 3


def test_identity_column_must_match_mode(world):
    db.session.add(Credential(auth_mode="user", virtual_key_id=world["vk"], mcp_server_id=world["server"],
                              values={}, header_keys=[]))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


@pytest.mark.parametrize("mode", ["user", "vk", "session"])
def test_one_pending_flow_per_binding(world, mode):
    db.session.add_all([flow(world, mode, "a"), flow(world, mode, "b", status="used")])
    db.session.commit()
    db.session.add(flow(world, mode, "c"))
    with pytest.raises(IntegrityError):
        db.session.commit()
    db.session.rollback()


def test_values_are_encrypted_at_rest(world):
    db.session.add(cred(world, "user"))
    db.session.commit()
    raw = db.session.execute(select(type_coerce(Credential.__table__.c["values"], Text))).scalar()
    assert CANARY not in raw
    assert db.session.scalar(select(Credential)).values == {"x-api-key": CANARY}


@pytest.mark.parametrize("owner,model", [("server", McpServer), ("vk", VirtualKey), ("user", User),
                                         ("session", McpSession)])
def test_cascades(world, owner, model):
    db.session.add_all([cred(world, m) for m in ("user", "vk", "session")]
                       + [flow(world, m, f"f-{m}") for m in ("user", "vk", "session")])
    db.session.commit()
    db.session.execute(model.__table__.delete().where(model.__table__.c.id == world[owner]))
    db.session.commit()
    left = {c.auth_mode for c in db.session.scalars(select(Credential))}
    flows = {f.auth_mode for f in db.session.scalars(select(Flow))}
    expected = set() if owner == "server" else {"user", "vk", "session"} - {owner}
    assert left == expected and flows == expected
    assert db.session.execute(text("SELECT count(*) FROM mcp_servers")).scalar() == (0 if owner == "server" else 1)
