"""Configuration: one place that reads the environment (and an optional .env).

Every setting has a documented default (README, "Configuration"). Secrets never have a
built-in default: when SECRET_KEY or PORTCULLIS_ENCRYPTION_KEY are absent, strong ones are
generated once into ``instance/secrets.env`` (mode 0600) and reused on every later start.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
import stat
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.fernet import Fernet
from dotenv import dotenv_values, load_dotenv

log = logging.getLogger(__name__)

SECRETS_FILE = "secrets.env"
GENERATED = ("SECRET_KEY", "PORTCULLIS_ENCRYPTION_KEY")
HEADER_PREFIX_RE = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _int(env: dict, name: str, default: int, lo: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be an integer, got {raw!r}") from None
    if lo is not None and value < lo:
        raise RuntimeError(f"{name} must be at least {lo}, got {raw!r}")
    return value


def _float(env: dict, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise RuntimeError(f"{name} must be a number, got {raw!r}") from None
    if not value > 0:
        raise RuntimeError(f"{name} must be positive, got {raw!r}")
    return value


MCP_AUTH_MODES = ("any", "oauth", "keys")


def _choice(env: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    value = (env.get(name) or default).strip().lower()
    if value not in choices:
        raise RuntimeError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _proxy_base_url(env: dict, base_url: str) -> str | None:
    """PORTCULLIS_PROXY_BASE_URL: an http(s) origin on another host than the dashboard's, or None."""
    raw = (env.get("PORTCULLIS_PROXY_BASE_URL") or "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    try:
        parts.port  # noqa: B018  (raises on a port that is not a number or out of range)
    except ValueError:
        parts = None
    if (parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname
            or "@" in parts.netloc or parts.path not in ("", "/") or parts.query or parts.fragment):
        raise RuntimeError("PORTCULLIS_PROXY_BASE_URL must be an http(s) origin such as https://proxy.example.com "
                           f"(no path, query or user), got {raw!r}")
    if parts.hostname == urlsplit(base_url).hostname:
        raise RuntimeError("PORTCULLIS_PROXY_BASE_URL must name another host than PORTCULLIS_BASE_URL "
                           f"({parts.hostname}): proxied answers must not share the dashboard's origin")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def _header_prefix(env: dict) -> str:
    prefix = (env.get("PORTCULLIS_IDENTITY_HEADER_PREFIX") or "X-Portcullis").strip()
    if not HEADER_PREFIX_RE.match(prefix):
        raise RuntimeError("PORTCULLIS_IDENTITY_HEADER_PREFIX must be a header name prefix such as X-Portcullis "
                           f"(letters, digits, inner dashes), got {prefix!r}")
    return prefix


def _list(env: dict, name: str) -> list[str]:
    return [v.strip() for v in (env.get(name) or "").split(",") if v.strip()]


DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _sso(env: dict) -> dict:
    """Single sign-on through the team's OpenID provider (app/sso.py); all unset: off. Checked
    here so that a half-done setting stops the start with a message instead of failing at login."""
    issuer = (env.get("PORTCULLIS_OIDC_ISSUER") or "").strip()
    password_login = _bool(env.get("PORTCULLIS_PASSWORD_LOGIN"), True)
    cfg = {"PORTCULLIS_OIDC_ISSUER": None, "PORTCULLIS_PASSWORD_LOGIN": password_login}
    if not issuer:
        if not password_login:
            raise RuntimeError("PORTCULLIS_PASSWORD_LOGIN=false needs single sign-on (PORTCULLIS_OIDC_ISSUER): "
                               "nobody could log in")
        return cfg
    parts = urlsplit(issuer)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if (parts.scheme != "https" and not (parts.scheme == "http" and loopback)) or not parts.hostname \
            or "@" in parts.netloc or parts.query or parts.fragment:
        raise RuntimeError("PORTCULLIS_OIDC_ISSUER must be the provider's https URL (http only on the loopback "
                           f"interface, for development), without query or user, got {issuer!r}")
    client_id = (env.get("PORTCULLIS_OIDC_CLIENT_ID") or "").strip()
    if not client_id:
        raise RuntimeError("PORTCULLIS_OIDC_ISSUER is set: PORTCULLIS_OIDC_CLIENT_ID is needed too")
    domains = [d.lower().lstrip("@") for d in _list(env, "PORTCULLIS_OIDC_ALLOWED_DOMAINS")]
    if not domains or not all(DOMAIN_RE.match(d) for d in domains):
        raise RuntimeError("PORTCULLIS_OIDC_ALLOWED_DOMAINS must list the e-mail domains that may sign in through "
                           f"single sign-on, comma-separated (e.g. example.com,example.org), got {domains!r}")
    admin_groups = _list(env, "PORTCULLIS_OIDC_ADMIN_GROUPS")
    scopes = (env.get("PORTCULLIS_OIDC_SCOPES") or "").split() or \
        ["openid", "email", "profile", *(["groups"] if admin_groups else [])]
    if "openid" not in scopes:
        raise RuntimeError(f"PORTCULLIS_OIDC_SCOPES must include openid, got {' '.join(scopes)!r}")
    cfg.update({
        "PORTCULLIS_OIDC_ISSUER": issuer,
        "PORTCULLIS_OIDC_CLIENT_ID": client_id,
        "PORTCULLIS_OIDC_CLIENT_SECRET": (env.get("PORTCULLIS_OIDC_CLIENT_SECRET") or "").strip() or None,
        "PORTCULLIS_OIDC_ALLOWED_DOMAINS": domains,
        "PORTCULLIS_OIDC_ADMIN_GROUPS": admin_groups,
        "PORTCULLIS_OIDC_SCOPES": " ".join(scopes),
        "PORTCULLIS_OIDC_PROVIDER_NAME": (env.get("PORTCULLIS_OIDC_PROVIDER_NAME") or "").strip()[:60]
        or parts.hostname,
    })
    return cfg


def _tighten(path: Path, mode: int) -> None:
    """Take away what others may do with a file or directory of ours, saying so in the log."""
    current = stat.S_IMODE(path.stat().st_mode)
    if not current & ~mode:
        return
    try:
        path.chmod(current & mode)
    except OSError as e:
        log.warning("%s is open to others (mode %03o) and could not be narrowed: %s", path, current, e)
    else:
        log.warning("%s was open to others (mode %03o): changed to %03o", path, current, current & mode)


def private_dir(path: Path) -> None:
    """Create a directory only its owner can use (0700), or narrow an existing one to that."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_sqlite_file(url, instance_path: str) -> None:
    """A SQLite database file (given the engine's URL) is made 0600, in a 0700 instance folder,
    before the first connection would create it with the process's umask (world-readable);
    an existing one, and its journal files, are narrowed to that. Not SQLite: nothing to do."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return
    path = Path(url.database)
    if path.parent == Path(instance_path):
        private_dir(path.parent)
    else:  # a folder of the operator's choosing: created private when missing, else left alone
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # an empty file is an empty database
    except FileExistsError:
        pass
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
        if (path.parent / name).exists():
            _tighten(path.parent / name, 0o600)


def ensure_instance_secrets(instance_path: str) -> tuple[dict[str, str], list[str]]:
    """Return the generated secrets kept in the instance folder (0700), creating missing ones.

    Creation uses O_EXCL so that several gunicorn workers starting at once agree on one file.
    """
    path = Path(instance_path) / SECRETS_FILE
    private_dir(path.parent)
    created: list[str] = []
    if not path.exists():
        values = {
            "SECRET_KEY": secrets.token_urlsafe(48),
            "PORTCULLIS_ENCRYPTION_KEY": Fernet.generate_key().decode(),
        }
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process won the race; read its file below
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write("# Generated by Portcullis on first run. Keep this file secret and backed up:\n")
                fh.write("# without PORTCULLIS_ENCRYPTION_KEY the stored credentials cannot be read.\n")
                for k, v in values.items():
                    fh.write(f"{k}={v}\n")
            created = list(values)
    _tighten(path, 0o600)
    stored = {k: v for k, v in dotenv_values(path).items() if v}
    return stored, created


# PostgreSQL over a network that goes silent (no refusal, no reset) must not hang a request or
# /readyz for the kernel's TCP timeout (minutes): bound the connection set-up and notice a dead
# peer within about half a minute.
PG_CONNECT_ARGS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                   "keepalives_count": 3, "tcp_user_timeout": 30_000}


def engine_options(database_url: str) -> dict:
    options = {"pool_pre_ping": True}
    if database_url.startswith("postgresql"):
        options["connect_args"] = dict(PG_CONNECT_ARGS)
    return options


def load_config(instance_path: str, overrides: dict | None = None) -> dict:
    """Build the Flask config dict from the environment, .env and the instance secrets."""
    load_dotenv(override=False)  # optional .env in the working directory; the real environment wins
    env = dict(os.environ)
    if overrides:
        env.update({k: v for k, v in overrides.items() if isinstance(v, str)})

    generated: list[str] = []
    if any(not env.get(name) for name in GENERATED):
        stored, generated = ensure_instance_secrets(instance_path)
        for name in GENERATED:
            if not env.get(name):
                env[name] = stored[name]
    generated = [n for n in generated if not os.environ.get(n)]

    port = _int(env, "PORT", 8080)
    base_url = (env.get("PORTCULLIS_BASE_URL") or f"http://127.0.0.1:{port}").rstrip("/")
    default_db = "sqlite:///" + str(Path(instance_path) / "portcullis.db")
    database_url = env.get("DATABASE_URL") or default_db
    if database_url.startswith("postgres://"):  # Heroku-style URLs
        database_url = "postgresql://" + database_url[len("postgres://"):]
    if database_url.startswith("postgresql://"):
        database_url = "postgresql+psycopg://" + database_url[len("postgresql://"):]

    keys = [k.strip() for k in env["PORTCULLIS_ENCRYPTION_KEY"].split(",") if k.strip()]
    redis_url = env.get("REDIS_URL") or None
    https = base_url.startswith("https://")
    cfg = {
        "SECRET_KEY": env["SECRET_KEY"],
        "PORTCULLIS_ENCRYPTION_KEYS": keys,
        "PORTCULLIS_BASE_URL": base_url,
        "PORT": port,
        "REDIS_URL": redis_url,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(database_url),
        "PORTCULLIS_SESSION_HOURS": _int(env, "PORTCULLIS_SESSION_HOURS", 12),
        "PORTCULLIS_API_TOKEN_HOURS": _int(env, "PORTCULLIS_API_TOKEN_HOURS", 24),
        "PORTCULLIS_LOGIN_RATE_LIMIT": env.get("PORTCULLIS_LOGIN_RATE_LIMIT") or "10 per minute",
        "PORTCULLIS_GENERATED_SECRETS": generated,
        "PORTCULLIS_CONFIG_CACHE_SECONDS": float(env.get("PORTCULLIS_CONFIG_CACHE_SECONDS") or 5),
        "PORTCULLIS_ENFORCE_AUTH": _bool(env.get("PORTCULLIS_ENFORCE_AUTH"), True),
        "PORTCULLIS_TOOLS_REFRESH_SECONDS": _int(env, "PORTCULLIS_TOOLS_REFRESH_SECONDS", 3600),
        # How long a call from an agent session that answers server-to-client requests (it declared
        # sampling, elicitation or roots) waits for the upstream when that is longer than the
        # server's read_timeout: a relayed elicitation waits for a person.
        "PORTCULLIS_MCP_RELAY_WAIT_SECONDS": _float(env, "PORTCULLIS_MCP_RELAY_WAIT_SECONDS", 600.0),
        # GET /mcp streams (app/mcp/streams.py): open streams per worker (gunicorn.conf.py adds as
        # many threads), keep-alive comment interval, how long the event log keeps events.
        "PORTCULLIS_MAX_STREAMS": _int(env, "PORTCULLIS_MAX_STREAMS", 256, lo=0),
        # ... of which one caller (a key, a token's consent) may hold at most this many
        "PORTCULLIS_MAX_STREAMS_PER_CALLER": _int(env, "PORTCULLIS_MAX_STREAMS_PER_CALLER", 32, lo=1),
        "PORTCULLIS_STREAM_KEEPALIVE_SECONDS": _float(env, "PORTCULLIS_STREAM_KEEPALIVE_SECONDS", 15.0),
        "PORTCULLIS_STREAM_RETENTION_SECONDS": _int(env, "PORTCULLIS_STREAM_RETENTION_SECONDS", 3600, lo=1),
        # ... and at most this many events per session (an upstream flooding cannot grow it without bound)
        "PORTCULLIS_STREAM_MAX_EVENTS": _int(env, "PORTCULLIS_STREAM_MAX_EVENTS", 1000, lo=1),
        # The sweeper (app/sweep.py): on/off, and how long orphaned credentials are kept (days).
        "PORTCULLIS_SWEEP": _bool(env.get("PORTCULLIS_SWEEP"), True),
        "PORTCULLIS_RATE_LIMIT_FAIL_OPEN": _bool(env.get("PORTCULLIS_RATE_LIMIT_FAIL_OPEN"), False),
        "PORTCULLIS_ORPHAN_RETENTION_DAYS": _int(env, "PORTCULLIS_ORPHAN_RETENTION_DAYS", 30, lo=0),
        # Reverse proxies in front whose X-Forwarded-* headers are trusted (0: none).
        "PORTCULLIS_TRUSTED_PROXIES": _int(env, "PORTCULLIS_TRUSTED_PROXIES", 0),
        # Cookies: HttpOnly + SameSite=Lax always, Secure when the public URL is HTTPS.
        "SESSION_COOKIE_NAME": "portcullis_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": https,
        "PREFERRED_URL_SCHEME": "https" if https else "http",
        "WTF_CSRF_TIME_LIMIT": None,  # the token lives as long as the (expiring) dashboard session
        # The proxy route (app/proxy): identity headers set on every forwarded request
        # (<prefix>-Key-ID, <prefix>-Agent-ID), upstream timeouts, request body limit (0: none).
        "PORTCULLIS_IDENTITY_HEADER_PREFIX": _header_prefix(env),
        # The proxy's own origin (None: /proxy is served beside the dashboard).
        "PORTCULLIS_PROXY_BASE_URL": _proxy_base_url(env, base_url),
        "PORTCULLIS_PROXY_CONNECT_TIMEOUT": _float(env, "PORTCULLIS_PROXY_CONNECT_TIMEOUT", 5.0),
        "PORTCULLIS_PROXY_READ_TIMEOUT": _float(env, "PORTCULLIS_PROXY_READ_TIMEOUT", 60.0),
        "PORTCULLIS_PROXY_MAX_BODY_BYTES": _int(env, "PORTCULLIS_PROXY_MAX_BODY_BYTES", 0, lo=0),
        # The longest lifetime a key issued by the portcullis__request_key tool may ask for.
        "PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS": _int(env, "PORTCULLIS_REQUEST_KEY_MAX_TTL_SECONDS", 86400, lo=1),
        # Portcullis as OAuth authorization server for its own /mcp (app/oauth_server): which
        # credentials /mcp takes (virtual keys and JWTs, JWTs only, keys only), token lifetimes,
        # the dynamic registration limit, loopback client metadata documents (development).
        "PORTCULLIS_MCP_AUTH": _choice(env, "PORTCULLIS_MCP_AUTH", MCP_AUTH_MODES, "any"),
        "PORTCULLIS_ACCESS_TOKEN_SECONDS": _int(env, "PORTCULLIS_ACCESS_TOKEN_SECONDS", 600, lo=1),
        "PORTCULLIS_REFRESH_TOKEN_DAYS": _int(env, "PORTCULLIS_REFRESH_TOKEN_DAYS", 30, lo=1),
        "PORTCULLIS_REGISTRATION_RATE_LIMIT": env.get("PORTCULLIS_REGISTRATION_RATE_LIMIT") or "20 per minute",
        "PORTCULLIS_CIMD_ALLOW_LOOPBACK": _bool(env.get("PORTCULLIS_CIMD_ALLOW_LOOPBACK"), False),
        # Operations (app/operations.py, app/logs.py): the bearer token /metrics asks for (None:
        # open), and the log format (text or json).
        "PORTCULLIS_METRICS_TOKEN": (env.get("PORTCULLIS_METRICS_TOKEN") or "").strip() or None,
        "PORTCULLIS_LOG_FORMAT": _choice(env, "PORTCULLIS_LOG_FORMAT", ("text", "json"), "text"),
        "RATELIMIT_STORAGE_URI": redis_url or "memory://",
        # Prefix of every rate-limit counter (several deployments sharing one Redis database).
        "RATELIMIT_KEY_PREFIX": (env.get("PORTCULLIS_RATE_LIMIT_PREFIX") or "").strip(),
        "RATELIMIT_HEADERS_ENABLED": True,
        "MAX_CONTENT_LENGTH": 1024 * 1024,
        **_sso(env),
    }
    if overrides:
        cfg.update({k: v for k, v in overrides.items() if k not in GENERATED or v})
    return cfg
