"""Configuration: generated secrets on first run, environment wins, URLs normalised."""
import os
import stat

from app.config import load_config

ENV_NAMES = ("SECRET_KEY", "PORTCULLIS_ENCRYPTION_KEY", "DATABASE_URL", "PORTCULLIS_BASE_URL", "PORT", "REDIS_URL")


def clean_env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("app.config.load_dotenv", lambda **kw: None)  # ignore a developer's .env


def test_missing_secrets_are_generated_once_into_the_instance_folder(tmp_path, monkeypatch):
    clean_env(monkeypatch)
    first = load_config(str(tmp_path))
    path = tmp_path / "secrets.env"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert set(first["PORTCULLIS_GENERATED_SECRETS"]) == {"SECRET_KEY", "PORTCULLIS_ENCRYPTION_KEY"}
    assert len(first["SECRET_KEY"]) >= 48
    second = load_config(str(tmp_path))
    assert second["SECRET_KEY"] == first["SECRET_KEY"]
    assert second["PORTCULLIS_ENCRYPTION_KEYS"] == first["PORTCULLIS_ENCRYPTION_KEYS"]
    assert second["PORTCULLIS_GENERATED_SECRETS"] == []  # reused, not generated again


def test_environment_wins_and_keys_are_comma_separated(tmp_path, monkeypatch):
    clean_env(monkeypatch)
    monkeypatch.setenv("SECRET_KEY", "from-env")
    monkeypatch.setenv("PORTCULLIS_ENCRYPTION_KEY", "k1, k2")
    cfg = load_config(str(tmp_path))
    assert cfg["SECRET_KEY"] == "from-env"
    assert cfg["PORTCULLIS_ENCRYPTION_KEYS"] == ["k1", "k2"]
    assert not (tmp_path / "secrets.env").exists()


def test_defaults_and_derived_settings(tmp_path, monkeypatch):
    clean_env(monkeypatch)
    cfg = load_config(str(tmp_path))
    assert cfg["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path}/portcullis.db"
    assert cfg["PORTCULLIS_BASE_URL"] == "http://127.0.0.1:8080"
    assert cfg["SESSION_COOKIE_SECURE"] is False and cfg["SESSION_COOKIE_HTTPONLY"] is True
    assert cfg["SESSION_COOKIE_SAMESITE"] == "Lax"
    assert cfg["RATELIMIT_STORAGE_URI"] == "memory://"
    monkeypatch.setenv("DATABASE_URL", "postgres://u@db/x")
    monkeypatch.setenv("PORTCULLIS_BASE_URL", "https://gw.example.com/")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    cfg = load_config(str(tmp_path))
    assert cfg["SQLALCHEMY_DATABASE_URI"] == "postgresql+psycopg://u@db/x"
    assert cfg["PORTCULLIS_BASE_URL"] == "https://gw.example.com"
    assert cfg["SESSION_COOKIE_SECURE"] is True
    assert cfg["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/0"
