"""Prometheus metrics (``GET /metrics``, prometheus_client).

Recorded where things happen: /mcp and /proxy are answered in front of Flask (no Flask hook
ever sees them), so their endpoints count themselves. Under gunicorn every worker writes its
values to files in ``PROMETHEUS_MULTIPROC_DIR`` (set by gunicorn.conf.py, which also marks an
exited worker dead) and a scrape on any worker adds them up; without that variable (one process,
the tests) the default registry is used.

Labels are bounded by what an admin configured (server, tool and service names); a name a
caller made up (an unknown tool or service) is counted under ``""``, never as itself.
"""
from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

TOOL_CALLS = Counter("portcullis_tool_calls_total", "tools/call on /mcp by server, tool and outcome "
                     "(ok, tool_error, upstream_error, auth_required, unknown_tool, credential_unavailable)",
                     ["server", "tool", "outcome"])
REQUEST_SECONDS = Histogram("portcullis_request_duration_seconds", "Time to answer /mcp and /proxy "
                            "(until the answer's headers; a streamed body may take longer)",
                            ["route"], buckets=BUCKETS)
PROXY_REQUESTS = Counter("portcullis_proxy_requests_total", "Requests on /proxy by service and status",
                         ["service", "status"])
UPSTREAM_ERRORS = Counter("portcullis_upstream_errors_total", "Upstreams that could not be reached or failed, "
                          "by route (mcp, proxy) and server or service", ["route", "target"])
AUTH_REQUIRED = Counter("portcullis_auth_required_total", "Tool calls answered 'connect your credential first'",
                        ["server"])
FLOWS_STARTED = Counter("portcullis_flows_started_total", "Credential submission flows started", ["kind"])
FLOWS_COMPLETED = Counter("portcullis_flows_completed_total", "Credential submission flows completed", ["kind"])
RECONCILED = Counter("portcullis_reconciled_credentials_total", "Rows changed by reconciliation "
                     "(orphaned, reactivated, pending_flows_deleted, needs_update)", ["change"])
RATE_LIMITED = Counter("portcullis_rate_limited_total", "Requests refused by a rate limit", ["route"])
SWEEPS = Counter("portcullis_sweeper_runs_total", "Sweeper runs by outcome (done, skipped, failed)", ["outcome"])
INVALIDATIONS = Counter("portcullis_invalidations_received_total",
                        "Cache drops announced by another instance", ["topic"])


def tool_call(server: str, tool: str, outcome: str) -> None:
    TOOL_CALLS.labels(server, tool, outcome).inc()


def exposition() -> tuple[bytes, str]:
    """The text format, over every worker's values under gunicorn."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
