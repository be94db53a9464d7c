"""Search and pagination for the dashboard tables (full page or htmx fragment)."""
from __future__ import annotations

from dataclasses import dataclass

from flask import render_template, request
from sqlalchemy import func, or_, select

from ..extensions import db
from . import is_htmx

PER_PAGE = 20
MAX_QUERY = 100


@dataclass
class Page:
    items: list
    page: int
    pages: int
    total: int
    q: str

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def search_term() -> str:
    """``?q=``, cut to MAX_QUERY characters, without NUL (which no database compares)."""
    return (request.args.get("q") or "").replace("\x00", "").strip()[:MAX_QUERY]


def matching(query, term: str, *columns):
    """Rows where any of the columns contains the term (case-insensitive, LIKE-escaped)."""
    if not term:
        return query
    return query.where(or_(*(func.lower(c).contains(term.lower(), autoescape=True) for c in columns)))


def page_number() -> int:
    """``?page=`` as a page number; anything else (not ASCII digits, 0, absurdly large) is page 1."""
    raw = request.args.get("page", "1")
    return int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) <= 10**6 else 1


def paginate(query, term: str, per_page: int = PER_PAGE) -> Page:
    page = page_number()
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    pages = max(1, -(-total // per_page))
    page = min(page, pages)
    items = db.session.scalars(query.limit(per_page).offset((page - 1) * per_page)).unique().all()
    return Page(items=items, page=page, pages=pages, total=total, q=term)


def table_page(full: str, fragment: str, **context):
    """The whole page, or only the results fragment when htmx asks for it."""
    return render_template(fragment if is_htmx() else full, **context)
