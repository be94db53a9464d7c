"""Two Portcullis instances on one PostgreSQL with Redis behind nginx (tests/support/cluster.py),
started once for this folder. Needs PostgreSQL (TEST_DATABASE_URL), Redis (TEST_REDIS_URL, default
db 3 on 127.0.0.1) and Debian's nginx (`.ci/run` installs it); skipped, saying which is missing,
otherwise."""
from __future__ import annotations

import os

import pytest

from tests.support.cluster import NGINX, Cluster

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/3")


def _redis_up() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping())
    except Exception:  # noqa: BLE001
        return False


SSO_CALLBACK = "/login/sso/callback"
SSO_SECRET = "cluster-sso-client-secret-71b"


@pytest.fixture(scope="session")
def cluster(oidc_provider_factory):
    pg = os.environ.get("TEST_DATABASE_URL", "")
    if not pg.startswith("postgresql"):
        pytest.skip("the cluster suite needs PostgreSQL: set TEST_DATABASE_URL (it runs in the PostgreSQL pass)")
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does)")
    if not _redis_up():
        pytest.skip(f"no Redis at {REDIS_URL}")
    from tests.support.mcp import free_port
    from tests.support.oidc_provider import static_client

    port = free_port()  # the balancer's: the provider knows its callback before the instances start
    provider = oidc_provider_factory(clients=[static_client(
        "portcullis", secret=SSO_SECRET, redirect_uris=[f"http://127.0.0.1:{port}{SSO_CALLBACK}"])])
    c = Cluster(pg, REDIS_URL, balancer_port=port, extra_env={
        "PORTCULLIS_OIDC_ISSUER": provider.issuer, "PORTCULLIS_OIDC_CLIENT_ID": "portcullis",
        "PORTCULLIS_OIDC_CLIENT_SECRET": SSO_SECRET, "PORTCULLIS_OIDC_ALLOWED_DOMAINS": "example.com",
        "PORTCULLIS_OIDC_ADMIN_GROUPS": "admins"})
    c.provider = provider
    yield c
    c.close()
