"""Dashboard login: rate limited per address; sessions are server-side and revocable."""
import re

from app.extensions import db
from app.models import Login
from tests.conftest import PASSWORD

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def post_login(client, email, password):
    token = CSRF_RE.search(client.get("/login").get_data(as_text=True)).group(1)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def test_login_attempts_are_rate_limited(app, client, admin_id):
    app.config["PORTCULLIS_LOGIN_RATE_LIMIT"] = "3 per minute"
    try:
        codes = [post_login(client, "admin@example.com", "wrong password").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        # Even the right password waits out the limit.
        assert post_login(client, "admin@example.com", PASSWORD).status_code == 429
    finally:
        app.config["PORTCULLIS_LOGIN_RATE_LIMIT"] = "1000 per minute"


def test_logout_revokes_the_server_side_session(app, client, admin_id):
    assert post_login(client, "admin@example.com", PASSWORD).status_code == 302
    assert client.get("/servers").status_code == 200
    cookie = client.get_cookie("portcullis_session")
    token = CSRF_RE.search(client.get("/servers").get_data(as_text=True)).group(1)
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    with app.app_context():
        assert db.session.scalar(db.select(Login.revoked_at)) is not None
    # Replaying the old cookie after logout does not log anyone in.
    client.set_cookie("portcullis_session", cookie.value)
    r = client.get("/servers")
    assert r.status_code == 302 and "/login" in r.headers["Location"]
