"""SSRF guard of upstream OAuth discovery (app/netguard.py): what an upstream on a public address
names (its 401's resource_metadata, the authorization server metadata's endpoints) may not point
Portcullis at loopback, private or link-local addresses, nor at plain http; an upstream registered
on a private or loopback address (self-hosted) may. Public addresses cannot be reached from this
box, so names are given addresses at the one resolver function (``netguard.resolve``); the servers
answering are real HTTP servers on 127.0.0.1, driven through the connect page."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import select

from app import netguard
from app.credentials.bindings import Binding
from app.credentials.resolvers import resolver
from app.extensions import db
from app.models import UpstreamOAuth
from tests.support.web import Web

PUBLIC = "93.184.216.34"


class Fake:
    """A tiny HTTP server: answers per (method, path) from ``routes``; counts connections."""

    def __init__(self):
        self.routes: dict[tuple[str, str], tuple[int, dict, bytes]] = {}
        self.connections = 0
        self.requests: list[tuple[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self):
                fake.connections += 1
                super().setup()

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                path = self.path.split("?", 1)[0]
                fake.requests.append((self.command, path))
                status, headers, body = fake.routes.get((self.command, path), (404, {}, b"{}"))
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self):
        self.routes.clear()
        self.requests.clear()
        self.connections = 0

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def fakes():
    upstream, internal = Fake(), Fake()
    yield upstream, internal
    upstream.close()
    internal.close()


@pytest.fixture
def names(monkeypatch, fakes):
    """Addresses per (host, port) or host, else the real resolver."""
    real = netguard.resolve
    table: dict = {}

    def resolve(host, port):
        return table.get((host, port)) or table.get(host) or real(host, port)
    monkeypatch.setattr(netguard, "resolve", resolve)
    for fake in fakes:
        fake.reset()
    return table


def authorize(app, admin_id, fields: dict):
    from app.ops.servers import create_server

    with app.app_context():
        server = create_server({"name": "up", "auth_type": "per_user_oauth", **fields})
        db.session.commit()
        flow_id, _ = resolver("per_user_oauth").start_flow(Binding("user", admin_id, server.id))
        sid = server.id
    r = Web(app.test_client()).login("admin@example.com").get(f"/connect/{flow_id}/authorize")
    return sid, r


def refused(r) -> str:
    page = r.get_data(as_text=True)
    assert r.status_code == 502, page[:500]
    return page


LOOPBACK = "resolves to a loopback, private or link-local address"


@pytest.mark.parametrize("where, why", [
    ("https://internal.test/prm", LOOPBACK),  # a name for a private address
    ("https://169.254.169.254/latest/meta-data", LOOPBACK),  # cloud metadata, link-local
    ("https://[::ffff:127.0.0.1]/prm", LOOPBACK),  # IPv4-mapped loopback
    ("https://rebind.test/prm", LOOPBACK),  # one public address and one loopback
    ("https://localhost:{internal}/prm", LOOPBACK),  # a live internal server: never contacted
    ("http://metadata.public.test/prm", "must be https://"),
    ("https://nowhere.invalid/prm", "does not resolve"),
])
def test_a_public_upstream_cannot_point_discovery_inward(app, admin_id, fakes, names, where, why):
    upstream, internal = fakes
    names[("127.0.0.1", upstream.port)] = [PUBLIC]  # the registered upstream: on a public address
    names["internal.test"] = ["10.0.0.5"]
    names["rebind.test"] = [PUBLIC, "127.0.0.1"]
    names["metadata.public.test"] = [PUBLIC]
    where = where.format(internal=internal.port)
    upstream.routes[("POST", "/mcp")] = (401, {"WWW-Authenticate": f'Bearer resource_metadata="{where}"'}, b"{}")
    sid, r = authorize(app, admin_id, {"url": upstream.url + "/mcp"})
    page = refused(r)
    assert why in page and "cannot connect to the upstream" in page
    assert internal.connections == 0 and upstream.requests == [("POST", "/mcp")]
    with app.app_context():
        assert db.session.scalar(select(UpstreamOAuth.registration).where(UpstreamOAuth.mcp_server_id == sid)) is None


def test_a_private_upstream_may_point_at_its_own_network(app, admin_id, fakes, names):
    """Self-hosted: the upstream on loopback names plain-http metadata on loopback: fetched."""
    upstream, internal = fakes
    where = f"{internal.url}/prm"
    upstream.routes[("POST", "/mcp")] = (401, {"WWW-Authenticate": f'Bearer resource_metadata="{where}"'}, b"{}")
    _, r = authorize(app, admin_id, {"url": upstream.url + "/mcp"})
    assert ("GET", "/prm") in internal.requests  # fetched (it answers 404: discovery then fails)
    assert "names no authorization server" in refused(r)


def as_metadata(issuer: str, **endpoints) -> bytes:
    return json.dumps({"issuer": issuer, "response_types_supported": ["code"],
                       "code_challenge_methods_supported": ["S256"], **endpoints}).encode()


GOOD = {"authorization_endpoint": "https://auth.public.test/authorize", "token_endpoint": "https://auth.public.test/token",
        "revocation_endpoint": "https://auth.public.test/revoke", "registration_endpoint": "https://auth.public.test/reg"}


@pytest.mark.parametrize("name, value, why", [
    ("token_endpoint", "https://10.0.0.9/token", LOOPBACK),
    ("revocation_endpoint", "https://internal.test/revoke", LOOPBACK),
    ("registration_endpoint", "https://169.254.169.254/reg", LOOPBACK),
    ("token_endpoint", "http://auth.public.test/token", "must be https://"),
    (None, None, None),  # all public https: accepted
])
def test_endpoints_named_by_the_metadata_are_guarded(app, admin_id, fakes, names, name, value, why):
    """An admin-entered authorization server on a public address (its metadata is fetched as the
    admin entered it); the endpoints its metadata names are held to that address's policy."""
    _, server = fakes
    names[("127.0.0.1", server.port)] = [PUBLIC]
    names["mcp.public.test"] = [PUBLIC]
    names["auth.public.test"] = [PUBLIC]
    names["internal.test"] = ["10.0.0.5"]
    endpoints = dict(GOOD)
    if name:
        endpoints[name] = value
    server.routes[("GET", "/.well-known/oauth-authorization-server")] = (200, {}, as_metadata(server.url, **endpoints))
    _, r = authorize(app, admin_id, {"url": "https://mcp.public.test/mcp",
                                     "oauth": {"authorization_server": server.url, "client_id": "mine"}})
    if why is None:
        assert r.status_code == 303 and r.headers["Location"].startswith("https://auth.public.test/authorize?")
        return
    page = refused(r)
    assert why in page and f"the {name}" in page


def test_the_policy(monkeypatch):
    monkeypatch.setattr(netguard, "resolve", lambda host, port: {
        "pub.test": [PUBLIC], "lan.test": ["192.168.1.10"], "v6.test": ["fe80::1"], "cgnat.test": ["100.64.0.1"],
    }.get(host, []))
    public = netguard.Guard("https://pub.test/mcp")
    assert not public.private
    public.check("https://pub.test/x")
    for url in ("https://lan.test/x", "https://v6.test/x", "https://cgnat.test/x", "http://pub.test/x",
                "https://user:pw@pub.test/x", "ftp://pub.test/x"):
        with pytest.raises(netguard.Refused):
            public.check(url)
    private = netguard.Guard("http://lan.test/mcp")
    assert private.private and private.plain_http
    private.check("http://v6.test/x")
    https_private = netguard.Guard("https://lan.test/mcp")
    https_private.check("https://cgnat.test/x")
    with pytest.raises(netguard.Refused, match="https"):
        https_private.check("http://lan.test/x")  # plain http only when the upstream itself is


def test_a_name_rebound_between_the_check_and_the_connection_reaches_nothing(app, admin_id, fakes, names,
                                                                              monkeypatch):
    """DNS rebinding: the metadata URL's name resolves to a public address when it is checked and
    to loopback when it is connected to. The request goes to the address that passed the check,
    checked again as it is sent: the rebound name is refused and the internal server never sees a
    connection."""
    import socket

    upstream, internal = fakes
    names[("127.0.0.1", upstream.port)] = [PUBLIC]
    real, asked = socket.getaddrinfo, []

    def dns(host, port, *args, **kwargs):  # the attacker's DNS: public first, loopback after
        if host == "rebind.test":
            asked.append(host)
            address = PUBLIC if len(asked) == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    where = f"https://rebind.test:{internal.port}/prm"
    upstream.routes[("POST", "/mcp")] = (401, {"WWW-Authenticate": f'Bearer resource_metadata="{where}"'}, b"{}")
    _, r = authorize(app, admin_id, {"url": upstream.url + "/mcp"})
    assert internal.connections == 0
    assert LOOPBACK in refused(r) and len(asked) >= 2


def test_discovered_endpoints_are_checked_again_when_used(app, fakes, names, monkeypatch):
    """The token endpoint passed the check at discovery; hours later its name resolves to
    loopback (rebound). A refresh is then refused before any connection; an admin's own
    endpoints (no discovery, no guard) are used as entered."""
    from app.upstream_oauth import protocol
    from app.upstream_oauth.registration import Registration

    _, internal = fakes
    names["mcp.public.test"] = [PUBLIC]
    import socket

    real = socket.getaddrinfo

    def dns(host, port, *args, **kwargs):  # public when it was discovered, loopback now
        if host == "auth.public.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    metadata = {"issuer": "https://auth.public.test", "token_endpoint": f"https://auth.public.test:{internal.port}/token"}
    reg = Registration(1, "https://mcp.public.test/mcp", metadata, "client", None, "none", None,
                       guarded_by="https://mcp.public.test/mcp")
    with app.test_request_context():
        with pytest.raises(protocol.Unreachable):
            protocol.refresh(reg, "a-refresh-token")
        assert internal.connections == 0
        internal.routes[("POST", "/token")] = (200, {}, json.dumps({"access_token": "a", "token_type": "Bearer"}).encode())
        entered = Registration(1, "https://mcp.public.test/mcp", {"token_endpoint": f"{internal.url}/token"},
                               "client", None, "none", None)
        assert protocol.refresh(entered, "a-refresh-token")["access_token"] == "a"


def test_registrations_stored_before_pinning_are_pinned_too():
    from types import SimpleNamespace

    from app.upstream_oauth.registration import view

    state = {"resource": "https://mcp.public.test/mcp", "metadata": {}, "client": {"client_id": "c"}}
    assert view(SimpleNamespace(id=1, oauth_config={}), state).guarded_by == "https://mcp.public.test/mcp"
    entered_as = {"authorization_server": "https://auth.public.test"}
    assert view(SimpleNamespace(id=1, oauth_config=entered_as), state).guarded_by == "https://auth.public.test"
    own = {"authorization_endpoint": "https://a.test/authorize", "token_endpoint": "https://a.test/token"}
    assert view(SimpleNamespace(id=1, oauth_config=own), state).guarded_by is None
    assert view(SimpleNamespace(id=1, oauth_config={}), {**state, "guarded_by": None}).guarded_by is None


@pytest.mark.parametrize("address", [
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (IPv6-only cloud subnets)
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b:1::a00:1",  # local-use NAT64
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "::127.0.0.1",  # IPv4-compatible
    "::a9fe:a9fe",
    "fec0::1",  # site-local
    "::ffff:10.0.0.1", "::ffff:169.254.169.254",  # IPv4-mapped
])
def test_ipv6_forms_of_inner_ipv4_addresses_are_not_public(address):
    assert not netguard.is_public(address)


@pytest.mark.parametrize("address", ["64:ff9b::5db8:d822", "2002:5db8:d822::1", "2606:4700::1111", PUBLIC])
def test_public_addresses_stay_public(address):
    assert netguard.is_public(address)


def test_the_upstream_name_turning_private_later_does_not_widen_the_policy(app, fakes, names, monkeypatch):
    """The public/private decision is taken at discovery and kept: the upstream's own name
    resolving to a private address at refresh time does not make inner endpoints reachable."""
    import socket

    from app.upstream_oauth import protocol
    from app.upstream_oauth.registration import Registration

    _, internal = fakes
    names["mcp.public.test"] = ["10.0.0.7"]  # the attacker's DNS, now
    real = socket.getaddrinfo

    def dns(host, port, *args, **kwargs):
        if host == "auth.public.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", dns)
    metadata = {"issuer": "https://auth.public.test", "token_endpoint": f"https://auth.public.test:{internal.port}/token"}
    reg = Registration(1, "https://mcp.public.test/mcp", metadata, "client", None, "none", None,
                       guarded_by="https://mcp.public.test/mcp", guarded_private=False)  # public at discovery
    with app.test_request_context():
        with pytest.raises(protocol.Unreachable):
            protocol.refresh(reg, "a-refresh-token")
    assert internal.connections == 0
