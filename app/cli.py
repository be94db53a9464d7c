"""CLI commands: ``flask --app wsgi <command>``."""
from __future__ import annotations

import os
import sys

import click
from flask import Flask, g

from .extensions import db


def register(app: Flask) -> None:
    @app.cli.command("create-admin")
    @click.option("--email", required=True, help="the admin's e-mail (created, or promoted and reset)")
    @click.option("--password", required=True, help="at least 10 characters")
    def create_admin(email: str, password: str):
        """Create an admin, or make an existing user an admin with this password."""
        from .models import User
        from .ops.errors import OpError
        from .ops.users import create_user, update_user

        g.actor_name = "cli"
        try:
            user = db.session.scalar(db.select(User).where(User.email == email.strip().lower()))
            if user is None:
                user = create_user({"email": email, "password": password, "role": "admin"})
            else:
                update_user(user, {"password": password, "role": "admin", "active": True})
            db.session.commit()
        except OpError as e:
            db.session.rollback()
            raise click.ClickException(f"{e.message} {e.fields or ''}".strip())
        click.echo(f"admin {user.email} is ready")

    @app.cli.command("ensure-admin")
    def ensure_admin_cmd():
        """Make sure an active admin exists and print how to log in the first time."""
        from .ops.users import ensure_admin

        g.actor_name = "cli"
        email = os.environ.get("PORTCULLIS_ADMIN_EMAIL") or "admin@localhost"
        password = os.environ.get("PORTCULLIS_ADMIN_PASSWORD") or None
        if password is not None and len(password) < 10:
            raise click.ClickException("PORTCULLIS_ADMIN_PASSWORD must be at least 10 characters")
        user, generated = ensure_admin(email, password)
        db.session.commit()
        url = app.config["PORTCULLIS_BASE_URL"]
        if not app.config["PORTCULLIS_PASSWORD_LOGIN"]:
            _sso_first_admin(user)
        elif generated:
            click.echo("")
            click.echo("  First run: log in at %s/login" % url)
            click.echo(f"    e-mail:   {user.email}")
            click.echo(f"    password: {generated}   (one-time: you choose a new one at first login)")
            click.echo("")
        elif user.email == email.lower() and password:
            click.echo(f"  Log in at {url}/login as {user.email} with PORTCULLIS_ADMIN_PASSWORD.")
        else:
            click.echo(f"  Admin account exists ({user.email}); log in at {url}/login.")

    def _sso_first_admin(user) -> None:
        """Password login is off: no password is printed (it could not be used); the first
        admin signs in through SSO with that address, which ties the account to them."""
        cfg = app.config
        domain = user.email.rpartition("@")[2]
        click.echo("")
        click.echo(f"  Password login is off: sign in at {cfg['PORTCULLIS_BASE_URL']}/login with "
                   f"{cfg['PORTCULLIS_OIDC_PROVIDER_NAME']}.")
        if user.sso_subject is None:
            click.echo(f"    The admin account {user.email} becomes the person who first signs in with that verified "
                       "address at the identity provider.")
            if domain not in cfg["PORTCULLIS_OIDC_ALLOWED_DOMAINS"]:
                click.echo(f"    Warning: {domain} is not in PORTCULLIS_OIDC_ALLOWED_DOMAINS, so nobody can sign in "
                           "as it: set PORTCULLIS_ADMIN_EMAIL to your address at the provider"
                           + (" (or rely on PORTCULLIS_OIDC_ADMIN_GROUPS)." if cfg["PORTCULLIS_OIDC_ADMIN_GROUPS"]
                              else "."), err=True)
        if cfg["PORTCULLIS_OIDC_ADMIN_GROUPS"]:
            click.echo("    Members of " + ", ".join(cfg["PORTCULLIS_OIDC_ADMIN_GROUPS"]) + " sign in as admins.")
        click.echo("")

    @app.cli.command("setup")
    @click.pass_context
    def setup_cmd(ctx):
        """What `make run` runs before the server starts: the first admin (ensure-admin) and the
        first key that signs OAuth access tokens, created once here rather than by several
        workers racing."""
        from .oauth_server import keys

        ctx.invoke(ensure_admin_cmd)
        key = keys.ensure()
        db.session.commit()
        if key is not None:
            click.echo(f"  Created the OAuth signing key {key.kid}.")

    @app.cli.command("rotate-signing-key")
    def rotate_signing_key():
        """A new key signs OAuth access tokens from now on; the old ones stay published and
        accepted until every token they signed has expired, then the sweeper removes them."""
        from .audit import record
        from .oauth_server import keys

        g.actor_name = "cli"
        new, retired = keys.rotate()
        record("oauth.rotate_signing_key", detail=f"new kid {new.kid}; retired {len(retired)}")
        db.session.commit()
        keys.cache().invalidate()
        for old in retired:
            click.echo(f"retired {old.kid}: published until {old.remove_after.isoformat()}Z")
        click.echo(f"signing with {new.kid}")

    @app.cli.command("refresh-tools")
    @click.option("--name", "names", multiple=True, help="only these servers (default: every enabled one)")
    def refresh_tools_cmd(names):
        """Re-discover the tools of MCP servers (initialize + tools/list); for cron or by hand."""
        from .credentials import DISCOVERABLE
        from .models import McpServer
        from .ops.errors import OpError
        from .ops.servers import refresh_tools

        g.actor_name = "cli"
        query = db.select(McpServer).order_by(McpServer.name)
        query = query.where(McpServer.name.in_(names)) if names else query.where(McpServer.enabled.is_(True))
        failed = 0
        for server in db.session.scalars(query).all():
            if server.auth_type not in DISCOVERABLE:
                click.echo(f"{server.name}: skipped ({server.auth_type} tools come with members' credentials)")
                continue
            try:
                refresh_tools(server)
                db.session.commit()
                click.echo(f"{server.name}: {len(server.tools)} tools")
            except OpError as e:
                db.session.rollback()
                failed += 1
                click.echo(f"{server.name}: {e.message}", err=True)
        if failed:
            sys.exit(1)

    @app.cli.command("sweep")
    def sweep_command():
        """Delete expired submission flows and orphaned credentials older than the retention."""
        from .sweep import sweep

        report = sweep(app)
        if report.skipped:
            click.echo("another instance is sweeping; skipped")
        else:
            click.echo(f"deleted {report.flows} expired flow(s), {report.orphans} old orphaned credential(s), "
                       f"{report.oauth} ended OAuth row(s), {report.events} old stream event(s), "
                       f"{report.mcp_sessions} ended MCP session(s); reconciliation changed {report.reconciled} row(s)")

    @app.cli.command("export")
    @click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default="-",
                  help="file to write (default: standard output)")
    def export_cmd(output):
        """Write users, servers, services, keys (their hashes) and grants as JSON, without any secret."""
        import json

        from .transfer import export_document

        doc = export_document()
        with click.open_file(output, "w") as fh:
            json.dump(doc, fh, indent=1, sort_keys=True)
            fh.write("\n")
        if output != "-":
            os.chmod(output, 0o600)  # password and key hashes: keep it like a backup
            click.echo(f"exported {len(doc['users'])} user(s), {len(doc['mcp_servers'])} server(s), "
                       f"{len(doc['services'])} service(s), {len(doc['virtual_keys'])} key(s) to {output}", err=True)

    @app.cli.command("import")
    @click.argument("source", type=click.File("r"))
    def import_cmd(source):
        """Import an export into this (fresh) instance, all or nothing."""
        import json

        from sqlalchemy.exc import SQLAlchemyError

        from .audit import record
        from .transfer import ImportRefused, import_document

        g.actor_name = "cli"
        try:
            doc = json.load(source)
        except (ValueError, UnicodeDecodeError) as e:
            raise click.ClickException(f"not JSON: {e}") from None
        try:
            report = import_document(doc)
            record("instance.import", detail=f"{report['users']} user(s), {report['mcp_servers']} server(s), "
                   f"{report['services']} service(s), {report['virtual_keys']} key(s)")
            db.session.commit()
        except ImportRefused as e:
            db.session.rollback()
            raise click.ClickException(f"{e}; nothing was imported") from None
        except SQLAlchemyError as e:
            db.session.rollback()
            reason = str(getattr(e, "orig", None) or type(e).__name__).splitlines()[0][:300]
            raise click.ClickException(f"the database refused the document ({reason}); nothing was imported") \
                from None
        click.echo(f"imported {report['users']} user(s), {report['mcp_servers']} server(s), "
                   f"{report['services']} service(s), {report['virtual_keys']} key(s)")
        for email in report["users_kept"]:
            click.echo(f"  kept the existing user {email}")
        for item in report["to_set"]:
            click.echo(f"  set again (secrets are never exported): {item}")

    @app.cli.command("rotate-encryption-key")
    def rotate_encryption_key():
        """Re-encrypt every stored secret with the first key of PORTCULLIS_ENCRYPTION_KEY."""
        from .audit import record
        from .crypto import rotate_all

        g.actor_name = "cli"
        reports = rotate_all(db.session, db.metadata)
        failed = sum(r.failed for r in reports)
        rotated = sum(r.rotated for r in reports)
        for r in reports:
            click.echo(f"{r.column}: {r.rows} rows, {r.rotated} re-encrypted, {r.current} already current,"
                       f" {r.failed} unreadable")
        if failed:
            db.session.rollback()
            click.echo(f"{failed} value(s) could not be decrypted with any configured key; nothing was changed. "
                       "Add the key they were written with to PORTCULLIS_ENCRYPTION_KEY and run again.", err=True)
            sys.exit(1)
        record("encryption.rotate", detail=f"re-encrypted {rotated} value(s)")
        db.session.commit()
        click.echo(f"done: {rotated} value(s) re-encrypted with the first key")
