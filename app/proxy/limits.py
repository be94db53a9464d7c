"""Per-key rate limits of the proxy route, on Flask-Limiter's storage and strategy.

The budget of a key is its ``rate_limit_per_minute``. It is counted by the rate limiter Flask-Limiter
built from the configuration (``RATELIMIT_STORAGE_URI``: ``memory://`` by default, the Redis of
``REDIS_URL`` when set, so that several instances share one budget; ``RATELIMIT_STRATEGY``,
fixed window by default). The proxy calls it itself rather than through a route decorator
because the limit is checked *after* the key, the grant and the scope (a request refused with
401/403 spends nothing), and because the answer carries our own ``RateLimit-*`` headers without
touching the upstream's (an API answering with ``X-RateLimit-*`` keeps its own).

When the storage is unreachable (Redis down) the proxy fails closed: ``LimitsUnavailable``, a
503 for the agent (a budget that cannot be counted is not granted), and a warning logged at most
once a minute. ``PORTCULLIS_RATE_LIMIT_FAIL_OPEN=true`` lets requests through unlimited instead.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from limits import RateLimitItemPerMinute

from ..extensions import limiter

log = logging.getLogger("portcullis.proxy")
NAMESPACE = "portcullis-proxy-key"
WINDOW = 60


class LimitsUnavailable(Exception):
    """The rate-limit storage cannot be reached: nothing could be counted."""


@dataclass(frozen=True)
class Budget:
    limit: int
    remaining: int
    reset_in: int  # seconds until the window resets
    allowed: bool

    def headers(self) -> dict[str, str]:
        h = {"RateLimit-Limit": str(self.limit), "RateLimit-Remaining": str(self.remaining),
             "RateLimit-Reset": str(self.reset_in), "RateLimit-Policy": f"{self.limit};w={WINDOW}"}
        if not self.allowed:
            h["Retry-After"] = str(self.reset_in)
        return h


class KeyLimits:
    def __init__(self, prefix: str = ""):
        self._scope = (prefix, NAMESPACE) if prefix else (NAMESPACE,)  # RATELIMIT_KEY_PREFIX, as Flask-Limiter
        self._items: dict[int, RateLimitItemPerMinute] = {}
        self._warned_at = -math.inf
        self._lock = threading.Lock()

    def _item(self, per_minute: int) -> RateLimitItemPerMinute:
        item = self._items.get(per_minute)
        if item is None:
            item = self._items.setdefault(per_minute, RateLimitItemPerMinute(per_minute))
        return item

    def hit_all(self, budgets) -> Budget | None:
        """Count one request against every budget it spends (the key's own, then those of the
        keys that issued it): the answer is the tightest of them. Raises ``LimitsUnavailable``."""
        tightest = None
        for key_id, per_minute in budgets:
            budget = self.hit(key_id, per_minute)
            if budget is None:
                continue
            if tightest is None or (budget.allowed, budget.remaining, -budget.reset_in) < \
                    (tightest.allowed, tightest.remaining, -tightest.reset_in):
                tightest = budget
        return tightest

    def hit(self, key_id: int, per_minute: int) -> Budget | None:
        """Count one request of this key; None when limits are off. Raises ``LimitsUnavailable``."""
        if not (limiter.enabled and limiter.initialized):
            return None
        item = self._item(per_minute)
        ident = (*self._scope, str(key_id))
        try:
            strategy = limiter.limiter
            allowed = strategy.hit(item, *ident)
            stats = strategy.get_window_stats(item, *ident)
        except Exception as e:  # the storage is down: say so now and then
            with self._lock:
                now = time.monotonic()
                if now - self._warned_at >= 60:
                    self._warned_at = now
                    log.warning("proxy rate limits unavailable (%s: %s)", type(e).__name__, e)
            raise LimitsUnavailable() from None
        reset_in = max(1, math.ceil(stats.reset_time - time.time()))
        return Budget(per_minute, max(0, stats.remaining), reset_in, allowed)
