"""OAuth pages of the dashboard: Connected apps (each person's consents; admins see all) and
OAuth clients (admin). The rules live in app/ops/oauth.py; the protocol in app/oauth_server."""
from __future__ import annotations

from flask import flash, g, render_template, url_for

from ..auth import admin_required, login_required
from ..extensions import db
from ..ops import oauth as ops
from . import bp, is_htmx
from .forms import done
from .listing import paginate, search_term, table_page


@bp.get("/connected-apps")
@login_required
def connected_apps():
    term = search_term()
    page = paginate(ops.consents_query(g.user, term), term)
    return table_page("web/connected_apps.html", "_partials/connected_apps_table.html", page=page,
                      live=ops.live_of(page.items))


@bp.post("/connected-apps/<id:consent_id>/revoke")
@login_required
def connected_app_revoke(consent_id: int):
    consent = ops.get_consent(g.user, consent_id)  # NotFound -> the 404 page
    name = consent.client.client_name or "the app"
    ops.revoke_consent(g.user, consent)
    db.session.commit()
    if is_htmx():
        return render_template("_partials/connected_app_revoked.html", name=name)
    flash(f"Revoked: {name} can no longer act for you.", "success")
    return done(url_for("web.connected_apps"))


@bp.get("/oauth-clients")
@admin_required
def oauth_clients():
    term = search_term()
    return table_page("web/oauth_clients.html", "_partials/oauth_clients_table.html",
                      page=paginate(ops.clients_query(term), term))


@bp.post("/oauth-clients/<id:client_pk>/delete")
@admin_required
def oauth_client_delete(client_pk: int):
    client = ops.get_client(client_pk)
    name = client.client_name or client.client_id
    ops.delete_client(client)
    db.session.commit()
    flash(f"OAuth client {name} deleted, with its consents and tokens.", "success")
    return done(url_for("web.oauth_clients"))
