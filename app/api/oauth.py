"""OAuth clients (admin) and consents ("Connected apps": your own; admins everyone's)."""
from flask import g, jsonify, request

from ..extensions import db
from ..models import OAuthClient
from ..ops import oauth as ops
from . import admin_only, bp, listing, page_params


def _term() -> str:
    return (request.args.get("q") or "").strip()[:200]


@bp.get("/oauth-clients")
@admin_only
def list_oauth_clients():
    limit, offset = page_params()
    return listing("oauth_clients", ops.clients_query(_term()), limit, offset, OAuthClient.to_dict)


@bp.get("/oauth-clients/<id:client_pk>")
@admin_only
def get_oauth_client(client_pk):
    return jsonify(ops.get_client(client_pk).to_dict())


@bp.delete("/oauth-clients/<id:client_pk>")
@admin_only
def delete_oauth_client(client_pk):
    ops.delete_client(ops.get_client(client_pk))
    db.session.commit()
    return "", 204


@bp.get("/oauth-consents")
def list_oauth_consents():
    limit, offset = page_params()
    query = ops.consents_query(g.user, _term())
    total = db.session.scalar(db.select(db.func.count()).select_from(query.order_by(None).subquery()))
    rows = db.session.scalars(query.limit(limit).offset(offset)).unique().all()
    live = ops.live_of(rows)
    return jsonify({"oauth_consents": [ops.consent_dict(c, live) for c in rows], "count": len(rows),
                    "total_count": total, "limit": limit, "offset": offset})


@bp.delete("/oauth-consents/<id:consent_id>")
def revoke_oauth_consent(consent_id):
    ops.revoke_consent(g.user, ops.get_consent(g.user, consent_id))
    db.session.commit()
    return "", 204
