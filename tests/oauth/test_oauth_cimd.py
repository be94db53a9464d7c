"""Client ID metadata documents: a client_id that is an HTTPS URL, fetched over real TLS from a
loopback server (allowed only with PORTCULLIS_CIMD_ALLOW_LOOPBACK), checked and cached."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from app.extensions import db
from app.models import OAuthClient
from app.oauth_server import clients
from tests.support.oauth import REDIRECT, authorize_url, consent, exchange, pkce, query_of
from tests.support.tls import DocumentServer, make_ca_and_cert
from tests.support.web import Web


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    ca, cert, key = make_ca_and_cert(tmp_path_factory.mktemp("tls"))
    server = DocumentServer(cert, key)
    server.ca = ca
    yield server
    server.close()


@pytest.fixture
def cimd(app, docs, monkeypatch):
    """Loopback documents allowed and the test CA trusted (SSL_CERT_FILE), as a developer would."""
    monkeypatch.setenv("SSL_CERT_FILE", str(docs.ca))
    app.config["PORTCULLIS_CIMD_ALLOW_LOOPBACK"] = True
    docs.documents.clear()
    docs.hits.clear()
    yield docs
    app.config["PORTCULLIS_CIMD_ALLOW_LOOPBACK"] = False


@pytest.fixture
def member(client, member_id) -> Web:
    return Web(client).login("member@example.com")


def document(url: str, **extra) -> dict:
    return {"client_id": url, "client_name": "Doc Client", "redirect_uris": [REDIRECT],
            "grant_types": ["authorization_code", "refresh_token"], "response_types": ["code"],
            "token_endpoint_auth_method": "none", **extra}


def test_a_metadata_document_client_signs_in(app, client, member, cimd):
    url = cimd.url("/client.json")
    cimd.documents["/client.json"] = document(url)
    verifier, challenge = pkce()
    page = member.get(authorize_url(url, challenge)).get_data(as_text=True)
    assert "Doc Client" in page and url in page
    r = consent(member, authorize_url(url, challenge))
    code = query_of(r.headers["Location"])["code"]
    tok = exchange(client, url, code, verifier)
    assert tok.status_code == 200, tok.get_data(as_text=True)
    with app.app_context():
        row = db.session.scalar(select(OAuthClient).where(OAuthClient.client_id == url))
        assert row.kind == "cimd" and row.fetched_at is not None
    assert cimd.hits["/client.json"] == 1  # cached: the consent POST and the token call did not fetch again


@pytest.mark.parametrize("doc, why", [
    (lambda url: document(url + "x"), "client_id must equal the URL"),
    (lambda url: document(url, redirect_uris=["http://evil.example/cb"]), "bad redirect"),
    (lambda url: document(url, token_endpoint_auth_method="client_secret_basic"), "secrets need registration"),
    (lambda url: b"not json", "not JSON"),
    (lambda url: b'{"client_id": "' + url.encode() + b'", "pad": "' + b"x" * 70_000 + b'"}', "too large"),
])
def test_bad_documents_are_refused(app, member, cimd, doc, why):
    url = cimd.url("/bad.json")
    cimd.documents["/bad.json"] = doc(url)
    r = member.get(authorize_url(url, pkce()[1]))
    assert r.status_code == 400 and "Location" not in r.headers, why
    with app.app_context():
        assert db.session.scalar(select(OAuthClient.id)) is None


def test_loopback_documents_need_the_development_setting(app, member, cimd):
    url = cimd.url("/client.json")
    cimd.documents["/client.json"] = document(url)
    app.config["PORTCULLIS_CIMD_ALLOW_LOOPBACK"] = False
    r = member.get(authorize_url(url, pkce()[1]))
    assert r.status_code == 400 and cimd.hits.get("/client.json") is None  # never even connected


def test_untrusted_certificates_are_refused(app, member, cimd, monkeypatch):
    monkeypatch.delenv("SSL_CERT_FILE")
    url = cimd.url("/client.json")
    cimd.documents["/client.json"] = document(url)
    assert member.get(authorize_url(url, pkce()[1])).status_code == 400


@pytest.mark.parametrize("address, host, allowed", [
    ("10.1.2.3", "intranet.example", False), ("192.168.0.4", "x.example", False), ("169.254.169.254", "m", False),
    ("127.0.0.1", "127.0.0.1", False), ("::1", "::1", False), ("fd00::1", "x", False), ("100.64.0.1", "cgnat", False),
    ("0.0.0.0", "zero", False), ("93.184.216.34", "example.com", True), ("2606:4700::1111", "one.one", True),
])
def test_only_public_addresses_are_fetched(app, address, host, allowed):
    with app.app_context():
        assert clients._allowed_address(address, host) is allowed


@pytest.mark.parametrize("url", ["http://127.0.0.1/client.json", "https://user@host.example/c.json",
                                 "https://host.example", "https://host.example/", "https://host.example/c#f"])
def test_document_urls_must_be_plain_https_with_a_path(app, url):
    with app.app_context(), pytest.raises(clients.CimdError):
        clients.fetch_document(url)
