"""The proxy route through the Flask test client against a real HTTP upstream that echoes what
it received: credential injection, what is removed and what is set, the checks in order, the
rate limit, streaming of large bodies, upstream failures, expiry, last_used_at."""
from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from app import snapshot
from app.extensions import db
from app.models.base import utcnow
from tests.support.mcp import free_port
from tests.support.proxy import ROOT_SECRET, add_proxy_key, add_service, key_row, seen_headers, set_key
from tests.upstream.http_echo import gate


@pytest.fixture
def svc(app, echo):
    return add_service(app, "echo", echo + "/base")


@pytest.fixture
def key(app, svc):
    return add_proxy_key(app, {svc: "write"})


def vk(secret):
    return {"X-Virtual-Key": secret}


def assert_error(r, status, code):
    assert r.status_code == status, r.get_data(as_text=True)
    assert r.mimetype == "application/json"
    assert r.json["error"]["code"] == code and r.json["error"]["message"]
    if status == 401:
        assert r.headers["WWW-Authenticate"] == 'Bearer realm="portcullis"'


# -- injection and what reaches the upstream ---------------------------------------------------

@pytest.mark.parametrize("header, sent_as, expected", [
    (None, "X-API-Key", ROOT_SECRET),  # the default
    ("Authorization", "Authorization", f"Bearer {ROOT_SECRET}"),
    ("X-Custom-Token", "X-Custom-Token", ROOT_SECRET),
])
def test_injects_the_root_credential_replacing_the_clients(app, client, echo, header, sent_as, expected):
    sid = add_service(app, "svc", echo, **({"credential_header": header} if header else {}))
    _, secret = add_proxy_key(app, {sid: "read"})
    r = client.get("/proxy/svc/thing", headers={**vk(secret), sent_as.lower(): "client-value", "Accept": "x/y"})
    assert r.status_code == 200
    seen = seen_headers(r.json)
    assert seen[sent_as.lower()] == [expected]  # replaced, not added beside the client's value
    assert seen["accept"] == ["x/y"]
    assert r.json["path"] == "/thing" and r.json["method"] == "GET"


def test_path_query_method_and_body_pass_through(client, key):
    _, secret = key
    r = client.open("/proxy/echo/a/b%2Fc/%C3%A9?z=1&a=1%2B2&b=x+y&a=3&empty=&flag", method="PATCH",
                    data=b"\x00\x01payload", headers={**vk(secret), "Content-Type": "application/x-thing"})
    assert r.status_code == 200
    assert r.json["method"] == "PATCH"
    assert r.json["path"] == "/base/a/b%2Fc/%C3%A9"  # as the client encoded it
    assert r.json["query"] == "z=1&a=1%2B2&b=x+y&a=3&empty=&flag"  # byte for byte, in order
    assert r.json["body_length"] == 9
    assert seen_headers(r.json)["content-type"] == ["application/x-thing"]
    for path, upstream in (("/proxy/echo", "/base"), ("/proxy/echo/", "/base/"), ("/proxy/echo//x", "/base//x")):
        assert client.get(path, headers=vk(secret)).json["path"] == upstream


@pytest.mark.parametrize("how", ["header", "bearer", "query"])
def test_the_key_never_reaches_the_upstream_nor_the_log(client, key, caplog, how):
    _, secret = key
    headers, query = {"X-Extra": f"copy {secret}"}, "?a=1"
    if how == "header":
        headers["X-Virtual-Key"] = secret
    elif how == "bearer":
        headers["Authorization"] = f"Bearer {secret}"
    else:
        query = f"?a=1&key={secret}&b=2&also={secret}"
    with caplog.at_level(logging.DEBUG):
        r = client.post("/proxy/echo/x" + query, data=b"body", headers=headers)
        bad = client.get("/proxy/echo/x?key=" + secret[:-2] + "zz")  # an invalid key is not logged either
    assert r.status_code == 200 and bad.status_code == 401
    assert secret not in r.get_data(as_text=True)  # the upstream saw it nowhere (headers, query, path, body)
    seen = seen_headers(r.json)
    assert "x-virtual-key" not in seen and "x-extra" not in seen
    assert "authorization" not in seen
    assert r.json["query"] == ("a=1&b=2" if how == "query" else "a=1")
    assert secret not in caplog.text and secret[:-2] not in caplog.text


def test_a_non_key_authorization_header_passes_when_not_the_credential_header(client, key):
    _, secret = key
    r = client.get("/proxy/echo/x", headers={**vk(secret), "Authorization": "Basic dXNlcjpwdw=="})
    assert seen_headers(r.json)["authorization"] == ["Basic dXNlcjpwdw=="]


def test_portcullis_own_access_tokens_never_reach_a_service(app, client, key):
    """An agent that sends its Portcullis OAuth token to /proxy by mistake does not hand it to the
    service (it would work on /mcp); another issuer's JWT, meant for the service, passes."""
    import time

    from joserfc import jwt

    from app.oauth_server import keys

    _, secret = key
    now = int(time.time())
    with app.app_context():
        kid, signing = keys.cache().signing_key()
        ours = jwt.encode({"alg": "RS256", "kid": kid}, {"iss": app.config["PORTCULLIS_BASE_URL"], "sub": "1",
                                                          "exp": now + 60}, signing)
        theirs = jwt.encode({"alg": "RS256", "kid": kid}, {"iss": "https://idp.example", "sub": "1",
                                                            "exp": now + 60}, signing)
    r = client.get("/proxy/echo/x", headers={**vk(secret), "Authorization": f"Bearer {ours}"})
    assert r.status_code == 200 and "authorization" not in seen_headers(r.json)
    r = client.get("/proxy/echo/x", headers={**vk(secret), "Authorization": f"Bearer {theirs}"})
    assert r.status_code == 200 and seen_headers(r.json)["authorization"] == [f"Bearer {theirs}"]


def test_hop_by_hop_cookies_forwarding_and_spoofed_identity_headers_are_stripped(client, key):
    key_id, secret = key
    r = client.get("/proxy/echo/x", headers={
        **vk(secret), "Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "timeout=5",
        "TE": "trailers", "Upgrade": "h2c", "Proxy-Authorization": "Basic x", "Trailer": "X-T",
        "Cookie": "portcullis_session=dashboard-secret", "X-Forwarded-For": "10.0.0.1", "Forwarded": "for=10.0.0.1",
        "X-Real-IP": "10.0.0.1", "Expect": "100-continue",
        "X-Portcullis-Key-ID": "999", "x-portcullis-agent-id": "evil", "X-PORTCULLIS-Admin": "yes",
        "X-Kept": "kept"})
    assert r.status_code == 200
    seen = seen_headers(r.json)
    for gone in ("connection", "x-drop-me", "keep-alive", "te", "upgrade", "proxy-authorization", "trailer",
                 "cookie", "x-forwarded-for", "forwarded", "x-real-ip", "expect", "x-portcullis-agent-id",
                 "x-portcullis-admin"):
        assert gone not in seen, gone
    assert seen["x-portcullis-key-id"] == [str(key_id)]  # set by Portcullis, once
    assert seen["x-kept"] == ["kept"]


def test_identity_headers_of_api_and_mcp_keys_and_a_configured_prefix(app, client, svc, monkeypatch):
    parent_id, parent = add_proxy_key(app, {svc: "write"})
    child_id, child = add_proxy_key(app, {svc: "read"}, source="mcp", agent_id=f"vk:{parent_id}")
    seen = seen_headers(client.get("/proxy/echo/x", headers=vk(parent)).json)
    assert seen["x-portcullis-key-id"] == [str(parent_id)] and "x-portcullis-agent-id" not in seen
    seen = seen_headers(client.get("/proxy/echo/x", headers=vk(child)).json)
    assert seen["x-portcullis-key-id"] == [str(child_id)]
    assert seen["x-portcullis-agent-id"] == [f"vk:{parent_id}"]

    monkeypatch.setitem(app.config, "PORTCULLIS_IDENTITY_HEADER_PREFIX", "X-Bifrost")
    r = client.get("/proxy/echo/x", headers={**vk(child), "X-Bifrost-Key-ID": "1", "X-Bifrost-Agent-ID": "evil",
                                            "X-Portcullis-Key-ID": "2"})
    seen = seen_headers(r.json)
    assert seen["x-bifrost-key-id"] == [str(child_id)] and seen["x-bifrost-agent-id"] == [f"vk:{parent_id}"]
    assert "x-portcullis-key-id" not in seen


# -- the checks, in order ------------------------------------------------------------------------

def test_checks_in_order(app, client, svc, echo):
    add_service(app, "other", echo)  # exists, not granted to the key
    key_id, secret = add_proxy_key(app, {svc: "read"}, rate_limit_per_minute=3)

    # 1. missing / unknown key (401), whatever else is wrong
    assert_error(client.post("/proxy/nosuch/x"), 401, "missing_key")
    assert_error(client.get("/proxy/echo/x", headers={"Authorization": "Basic abc"}), 401, "missing_key")
    assert_error(client.post("/proxy/nosuch/x", headers=vk("vk_" + "x" * 43)), 401, "invalid_key")
    assert_error(client.get("/proxy/echo/x", headers=vk("not-a-key")), 401, "invalid_key")
    assert_error(client.get(f"/proxy/echo/x?key={secret}", headers=vk(secret + "x")), 401, "invalid_key")  # two keys
    # 3. not granted (403): another service, an unknown one, no service at all
    assert_error(client.get("/proxy/other/x", headers=vk(secret)), 403, "service_not_granted")
    assert_error(client.post("/proxy/nosuch/x", headers=vk(secret)), 403, "service_not_granted")
    assert_error(client.get("/proxy", headers=vk(secret)), 403, "service_not_granted")
    # 4. read scope: GET/HEAD/OPTIONS only (403)
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert_error(client.open("/proxy/echo/x", method=method, headers=vk(secret)), 403, "read_only")
    assert client.open("/proxy/echo/x", method="TRACE", headers=vk(secret)).status_code == 405
    # none of the refused requests spent the budget of 3
    for method in ("GET", "HEAD", "OPTIONS"):
        r = client.open("/proxy/echo/x", method=method, headers=vk(secret))
        assert r.status_code == 200, method
    assert r.headers["RateLimit-Remaining"] == "0"
    # 5. rate limit (429) comes after every other check
    limited = client.get("/proxy/echo/x", headers=vk(secret))
    assert_error(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["RateLimit-Limit"] == "3" and limited.headers["RateLimit-Remaining"] == "0"
    assert 1 <= int(limited.headers["RateLimit-Reset"]) <= 60 and limited.headers["RateLimit-Policy"] == "3;w=60"
    assert_error(client.post("/proxy/echo/x", headers=vk(secret)), 403, "read_only")  # 403 still before 429
    assert_error(client.get("/proxy/other/x", headers=vk(secret)), 403, "service_not_granted")

    # 2. revoked / expired (401), before the grant check
    set_key(app, key_id, expires_at=utcnow() - timedelta(seconds=1))
    assert_error(client.get("/proxy/other/x", headers=vk(secret)), 401, "key_expired")
    set_key(app, key_id, active=False)
    assert_error(client.get("/proxy/other/x", headers=vk(secret)), 401, "key_revoked")
    assert_error(client.get("/proxy/echo/x", headers=vk(secret)), 401, "key_revoked")


def test_any_method_is_proxied_except_trace_and_connect(app, client, svc):
    _, writer = add_proxy_key(app, {svc: "write"})
    _, reader = add_proxy_key(app, {svc: "read"})
    r = client.open("/proxy/echo/dav", method="PROPFIND", headers=vk(writer))
    assert r.status_code == 200 and r.json["method"] == "PROPFIND"
    assert_error(client.open("/proxy/echo/dav", method="PROPFIND", headers=vk(reader)), 403, "read_only")
    for method in ("TRACE", "CONNECT"):
        r = client.open("/proxy/echo/x", method=method, headers=vk(writer))
        assert_error(r, 405, "method_not_allowed")
        assert "TRACE" not in r.headers["Allow"]


def test_an_unexpected_failure_is_a_json_500_that_logs_no_query(app, client, key, monkeypatch, caplog):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(snapshot, "current", broken)
    with caplog.at_level(logging.ERROR):
        r = client.get(f"/proxy/echo/x?key={key[1]}&q=secretish")
    assert_error(r, 500, "internal_error")
    assert "unhandled error on /proxy echo" in caplog.text
    assert key[1] not in caplog.text and "secretish" not in caplog.text


def test_a_deactivated_owner_stops_the_key(app, client, svc, member_id):
    from app.models import User

    _, secret = add_proxy_key(app, {svc: "read"}, owner_id=member_id)
    assert client.get("/proxy/echo/x", headers=vk(secret)).status_code == 200
    with app.app_context():
        db.session.get(User, member_id).active = False
        db.session.commit()
    assert_error(client.get("/proxy/echo/x", headers=vk(secret)), 401, "key_revoked")


def test_a_key_expires_by_itself(app, client, svc, monkeypatch):
    key_id, secret = add_proxy_key(app, {svc: "read"})
    expiry = utcnow() + timedelta(minutes=10)
    set_key(app, key_id, expires_at=expiry)
    assert client.get("/proxy/echo/x", headers=vk(secret)).status_code == 200
    # the clock passes the expiry; nothing is edited (the snapshot stays as it is)
    monkeypatch.setattr("app.identity.utcnow", lambda: expiry + timedelta(seconds=1))  # the door's clock
    assert_error(client.get("/proxy/echo/x", headers=vk(secret)), 401, "key_expired")


def test_grant_and_scope_changes_apply_at_once(app, client, svc, admin_api):
    key_id, secret = add_proxy_key(app, {svc: "write"})
    assert client.post("/proxy/echo/x", headers=vk(secret)).status_code == 200
    assert admin_api.patch(f"/virtual-keys/{key_id}", json={"services": [{"service_id": svc, "scope": "read"}]}
                           ).status_code == 200
    assert_error(client.post("/proxy/echo/x", headers=vk(secret)), 403, "read_only")
    assert admin_api.patch(f"/virtual-keys/{key_id}", json={"services": []}).status_code == 200
    assert_error(client.get("/proxy/echo/x", headers=vk(secret)), 403, "service_not_granted")


def test_rate_limit_is_per_key_and_shared_with_the_issuer(app, client, svc):
    a_id, a = add_proxy_key(app, {svc: "read"}, rate_limit_per_minute=3)
    _, b = add_proxy_key(app, {svc: "read"}, rate_limit_per_minute=3)
    _, child = add_proxy_key(app, {svc: "read"}, source="mcp", agent_id=f"vk:{a_id}", rate_limit_per_minute=3)
    assert [client.get("/proxy/echo/x", headers=vk(child)).status_code for _ in range(2)] == [200, 200]
    assert client.get("/proxy/echo/x", headers=vk(a)).status_code == 200
    # the issuer's budget of 3 is spent (2 by the key it issued): both are limited, b is not
    assert_error(client.get("/proxy/echo/x", headers=vk(a)), 429, "rate_limited")
    limited = client.get("/proxy/echo/x", headers=vk(child))
    assert_error(limited, 429, "rate_limited")
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert client.get("/proxy/echo/x", headers=vk(b)).status_code == 200


def test_issued_keys_follow_their_issuer(app, client, svc, echo):
    other = add_service(app, "other", echo)
    parent_id, _ = add_proxy_key(app, {svc: "write", other: "read"})
    child_id, child = add_proxy_key(app, {svc: "write", other: "write"}, source="mcp", agent_id=f"vk:{parent_id}")
    assert client.post("/proxy/echo/x", headers=vk(child)).status_code == 200
    assert_error(client.post("/proxy/other/x", headers=vk(child)), 403, "read_only")  # narrowed to the issuer's
    set_key(app, parent_id, active=False)
    assert_error(client.get("/proxy/echo/x", headers=vk(child)), 401, "key_revoked")
    set_key(app, parent_id, active=True, expires_at=utcnow() - timedelta(seconds=1))
    assert_error(client.get("/proxy/echo/x", headers=vk(child)), 401, "key_expired")
    with app.app_context():
        db.session.execute(text("DELETE FROM virtual_keys WHERE id = :id"), {"id": parent_id})
        db.session.commit()
    snapshot.invalidate()
    assert_error(client.get("/proxy/echo/x", headers=vk(child)), 401, "key_revoked")
    # a key that names itself (or a cycle) as issuer is refused too
    set_key(app, child_id, agent_id=f"vk:{child_id}")
    assert_error(client.get("/proxy/echo/x", headers=vk(child)), 401, "key_revoked")


# -- bodies, answers, failures ----------------------------------------------------------------------

def test_multi_megabyte_upload_and_download(client, key):
    _, secret = key
    body = bytes(range(256)) * (5 * 4096 + 7)  # ~5 MB: beyond the app's 1 MiB MAX_CONTENT_LENGTH
    r = client.put("/proxy/echo/upload", data=body, headers=vk(secret))
    assert r.status_code == 200
    assert r.json == {**r.json, "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}

    r = client.get(f"/proxy/echo/download?bytes={len(body)}", headers=vk(secret), buffered=False)
    assert r.status_code == 200 and r.headers["Content-Length"] == str(len(body))
    got = hashlib.sha256()
    for chunk in r.response:
        got.update(chunk)
    r.close()
    from tests.upstream.http_echo import PATTERN

    expected = hashlib.sha256((PATTERN * (len(body) // len(PATTERN) + 1))[:len(body)]).hexdigest()
    assert got.hexdigest() == expected


def test_a_body_limit_can_be_set(app, client, key, monkeypatch):
    monkeypatch.setitem(app.config, "PORTCULLIS_PROXY_MAX_BODY_BYTES", 1000)
    assert_error(client.post("/proxy/echo/upload", data=b"x" * 1001, headers=vk(key[1])), 413, "too_large")
    assert client.post("/proxy/echo/upload", data=b"x" * 1000, headers=vk(key[1])).json["body_length"] == 1000


def test_answer_headers_statuses_and_redirects(app, client, key):
    _, secret = key
    r = client.get("/proxy/echo/status?code=418", headers=vk(secret))
    assert r.status_code == 418 and r.json["method"] == "GET"  # the upstream's own answer, as is
    assert "Set-Cookie" not in r.headers and "X-Hop" not in r.headers
    assert r.headers["X-RateLimit-Limit"] == "5000"  # the upstream's own rate-limit headers stay
    assert r.headers.getlist("RateLimit-Limit") == ["60"]  # RateLimit-* is the key's budget
    assert r.headers.getlist("Vary") == ["Accept", "Origin"]
    r = client.get("/proxy/echo/status?code=204", headers=vk(secret))
    assert r.status_code == 204 and r.get_data() == b"" and "Content-Type" not in r.headers
    r = client.head("/proxy/echo/download?bytes=1000", headers=vk(secret))
    assert r.status_code == 200 and r.headers["Content-Length"] == "1000" and r.get_data() == b""

    base = app.config["PORTCULLIS_BASE_URL"]
    r = client.get("/proxy/echo/redirect?to=/base/next%3Fp=1", headers=vk(secret))
    assert r.status_code == 302 and r.headers["Location"] == f"{base}/proxy/echo/next?p=1"
    r = client.get("/proxy/echo/redirect?to=https://elsewhere.example/x", headers=vk(secret))
    assert r.headers["Location"] == "https://elsewhere.example/x"  # not under the service: left alone
    r = client.get("/proxy/echo/redirect?to=/outside", headers=vk(secret))
    assert r.headers["Location"] == "/outside"


def test_dot_segments_are_refused(client, key):
    for path in ("/proxy/echo/a/../b", "/proxy/echo/%2e%2e/x", "/proxy/echo/a/.%2E", "/proxy/echo/..%2Fx",
                 # with path parameters, which Tomcat, Jetty and Spring drop before resolving dot segments
                 "/proxy/echo/a/..;/..;/admin", "/proxy/echo/%2e%2e;/x", "/proxy/echo/.;x/y", "/proxy/echo/..;a=b;c/x",
                 "/proxy/echo/%2E%2E%3Bx/y", "/proxy/echo/a%2F..;x", "/proxy/echo/a%5C..;/x", "/proxy/echo/.;"):
        assert_error(client.get(path, headers=vk(key[1])), 400, "invalid_path")
    for path in ("/proxy/echo/a;b/c", "/proxy/echo/...;x", "/proxy/echo/.x;y", "/proxy/echo/x;..", "/proxy/echo/;../x"):
        r = client.get(path, headers=vk(key[1]))  # no dot segment once the parameters are gone
        assert r.status_code == 200 and r.json["path"] == "/base" + path[len("/proxy/echo"):], path


def test_a_read_grant_cannot_be_widened_by_a_method_override(app, client, svc):
    _, reader = add_proxy_key(app, {svc: "read"}, rate_limit_per_minute=20)
    _, writer = add_proxy_key(app, {svc: "write"})
    # the upstream honours overrides, as lenient frameworks do: with a write grant they pass
    r = client.get("/proxy/echo/x?_method=DELETE", headers={**vk(writer), "X-HTTP-Method-Override": "PUT"})
    assert r.json["effective_method"] == "PUT" and r.json["query"] == "_method=DELETE"
    assert client.get("/proxy/echo/x?_method=DELETE", headers=vk(writer)).json["effective_method"] == "DELETE"

    # a read grant: the override headers never reach the upstream
    for method in ("GET", "HEAD", "OPTIONS"):
        for name in ("X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override", "x-http-method-override"):
            r = client.open("/proxy/echo/x", method=method, headers={**vk(reader), name: "DELETE"})
            assert r.status_code == 200
            if method != "HEAD":
                assert r.json["effective_method"] == method and name.lower() not in seen_headers(r.json)
    # ... and a _method parameter is refused, before anything is counted
    remaining = int(r.headers["RateLimit-Remaining"])
    for query in ("_method=DELETE", "a=1&_method=delete", "%5Fmethod=DELETE", "_METHOD=PUT", "_method", "_me%74hod=x"):
        r = client.get(f"/proxy/echo/x?{query}", headers=vk(reader))
        assert_error(r, 403, "read_only")
        assert "_method" in r.json["error"]["message"]
    r = client.get("/proxy/echo/x?my_method=DELETE&method=DELETE&x=_method", headers=vk(reader))
    assert r.status_code == 200 and r.json["effective_method"] == "GET"  # other names are not overrides
    assert int(r.headers["RateLimit-Remaining"]) == remaining - 1


def test_upstream_unreachable_closed_and_slow(app, client, echo, monkeypatch, caplog):
    down = add_service(app, "down", f"http://127.0.0.1:{free_port()}")
    up = add_service(app, "up", echo)
    _, secret = add_proxy_key(app, {down: "read", up: "read"})
    with caplog.at_level(logging.WARNING):
        assert_error(client.get("/proxy/down/x?q=1", headers=vk(secret)), 502, "upstream_unreachable")
        assert_error(client.get("/proxy/up/close", headers=vk(secret)), 502, "upstream_failed")
        monkeypatch.setitem(app.config, "PORTCULLIS_PROXY_READ_TIMEOUT", 0.3)
        held = uuid.uuid4().hex  # the upstream answers only once the test releases it
        try:
            assert_error(client.get(f"/proxy/up/slow?gate={held}", headers=vk(secret)), 504, "upstream_timeout")
        finally:
            gate(held).set()
    assert "q=1" not in caplog.text and "unreachable" in caplog.text
    assert client.get("/proxy/up/x", headers=vk(secret)).status_code == 200  # the next call is fine


def test_an_undecryptable_root_secret_fails_that_service_only(app, client, echo, svc):
    broken = add_service(app, "broken", echo)
    _, secret = add_proxy_key(app, {svc: "read", broken: "read"})
    token = Fernet(Fernet.generate_key()).encrypt(b"lost").decode()
    with app.app_context():
        db.session.execute(text("UPDATE services SET secret = :t WHERE id = :id"), {"t": token, "id": broken})
        db.session.commit()
    snapshot.invalidate()
    assert_error(client.get("/proxy/broken/x", headers=vk(secret)), 500, "decryption_failed")
    assert client.get("/proxy/echo/x", headers=vk(secret)).status_code == 200


def test_last_used_at_is_written_once_a_minute_without_invalidating_the_snapshot(app, client, key):
    key_id, secret = key
    app.extensions["proxy_usage"]._last.clear()  # ids are reused between tests on SQLite
    before = key_row(app, key_id)
    assert before["last_used_at"] is None
    generation = snapshot._generation[0]
    with client.get("/proxy/echo/x", headers=vk(secret)) as r:  # written when the answer is closed
        assert r.status_code == 200
    first = key_row(app, key_id)
    assert first["last_used_at"] is not None and first["updated_at"] == before["updated_at"]
    assert snapshot._generation[0] == generation  # a plain UPDATE: the snapshot stays
    earlier = first["last_used_at"] - timedelta(minutes=5)
    set_key(app, key_id, last_used_at=earlier)
    with client.get("/proxy/echo/x", headers=vk(secret)) as r:
        assert r.status_code == 200
    assert key_row(app, key_id)["last_used_at"] == earlier  # not written again within the minute


def test_proxy_settings_defaults_and_validation(tmp_path, monkeypatch):
    from app.config import load_config

    monkeypatch.setattr("app.config.load_dotenv", lambda **kw: None)
    for name in ("PORTCULLIS_IDENTITY_HEADER_PREFIX", "PORTCULLIS_PROXY_CONNECT_TIMEOUT", "PORTCULLIS_PROXY_READ_TIMEOUT",
                 "PORTCULLIS_PROXY_MAX_BODY_BYTES", "PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS",
                 "PORTCULLIS_RATE_LIMIT_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    cfg = load_config(str(tmp_path))
    assert (cfg["PORTCULLIS_IDENTITY_HEADER_PREFIX"], cfg["PORTCULLIS_PROXY_CONNECT_TIMEOUT"],
            cfg["PORTCULLIS_PROXY_READ_TIMEOUT"], cfg["PORTCULLIS_PROXY_MAX_BODY_BYTES"],
            cfg["PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS"]) == ("X-Portcullis", 5.0, 60.0, 0, 86400)
    assert cfg["RATELIMIT_KEY_PREFIX"] == ""
    monkeypatch.setenv("PORTCULLIS_IDENTITY_HEADER_PREFIX", "X-Bifrost")
    assert load_config(str(tmp_path))["PORTCULLIS_IDENTITY_HEADER_PREFIX"] == "X-Bifrost"
    for name, bad in (("PORTCULLIS_IDENTITY_HEADER_PREFIX", "X-Bad-"), ("PORTCULLIS_IDENTITY_HEADER_PREFIX", "X Y"),
                      ("PORTCULLIS_PROXY_READ_TIMEOUT", "0"), ("PORTCULLIS_PROXY_MAX_BODY_BYTES", "-1"),
                      ("PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS", "0")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(RuntimeError, match=name):
            load_config(str(tmp_path))
        monkeypatch.delenv(name)
