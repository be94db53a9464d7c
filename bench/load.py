"""Load through the balancer: two Portcullis instances (gunicorn.conf.py, two workers each) on one
PostgreSQL and Redis behind nginx (tests/support/cluster.py), driven at a fixed rate for 60 s with
tool calls (/mcp, an SDK upstream's ``echo``) and proxy requests (/proxy, an HTTP echo upstream)
mixed half and half. Prints errors (anything but a 200 with a good answer), p50/p99 per kind and
the resident memory of every worker after warm-up and at the end (goal: zero errors, growth < 10 %).

    .venv/bin/python bench/load.py [--rate 80] [--seconds 60] [--warmup 10]
        [--database postgresql://postgres@127.0.0.1:5432/bench_load] [--redis redis://127.0.0.1:6379/3]

The requests are sent on a fixed schedule (open loop): a slow answer does not slow the rate down.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.cluster import Cluster  # noqa: E402
from tests.support.mcp import start_upstream, stop  # noqa: E402
from tests.upstream import http_echo  # noqa: E402

ACCEPT = "application/json, text/event-stream"


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Agent:
    """One thread's client: an MCP session through the balancer, and the proxy."""

    local = threading.local()

    def __init__(self, base: str, key: str):
        self.base, self.key = base, key

    def _client(self):
        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = httpx.Client(base_url=self.base, timeout=30)
            r = c.post("/mcp", headers={"Authorization": f"Bearer {self.key}", "Accept": ACCEPT}, json={
                "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "load", "version": "1"}}})
            r.raise_for_status()
            self.local.session = r.headers["Mcp-Session-Id"]
        return c

    def tool_call(self, i: int) -> bool:
        c = self._client()
        r = c.post("/mcp", headers={"Authorization": f"Bearer {self.key}", "Accept": ACCEPT,
                                    "Mcp-Session-Id": self.local.session, "MCP-Protocol-Version": "2025-11-25"},
                   json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                         "params": {"name": "alpha__echo", "arguments": {"text": f"call {i}"}}})
        if r.status_code != 200:
            return False
        result = r.json().get("result") or {}
        return not result.get("isError") and result.get("content", [{}])[0].get("text", "").endswith(f"call {i}")

    def proxy(self, i: int) -> bool:
        r = self._client().get(f"/proxy/echo/item/{i}", headers={"X-Virtual-Key": self.key})
        return r.status_code == 200


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rate", type=float, default=80.0, help="requests per second, both kinds together")
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--warmup", type=float, default=10.0)
    p.add_argument("--database", default="postgresql://postgres@127.0.0.1:5432/bench_load")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/3")
    args = p.parse_args()

    upstream, upstream_url = start_upstream("--name", "alpha")
    echo, echo_url = http_echo.start()
    cluster = Cluster(args.database, args.redis, extra_env={"PORTCULLIS_LOG_FORMAT": "text"})
    try:
        api = cluster.api
        svc = api.post("/services", json={"name": "echo", "base_url": echo_url, "secret": "load-root-secret"}).json()
        srv = api.post("/mcp-servers", json={"name": "alpha", "url": upstream_url}).json()
        made = api.post("/virtual-keys", json={"name": "load", "rate_limit_per_minute": 100_000,
                                               "services": [{"service_id": svc["id"], "scope": "read"}],
                                               "mcp_servers": [{"server_id": srv["id"], "tools": None}]})
        made.raise_for_status()
        key = made.json()["key"]
        agent = Agent(cluster.balancer, key)
        workers = cluster.worker_pids()
        print(f"{len(cluster.instances)} instances, workers {workers}, nginx at {cluster.balancer}; "
              f"{args.rate:g} requests/s for {args.seconds:g} s (warm-up {args.warmup:g} s)")

        results: dict[str, list[tuple[float, float, bool]]] = {"tool call": [], "proxy": []}
        rss: dict[int, list[tuple[float, int]]] = {pid: [] for pid in workers}
        done = threading.Event()

        def sample():
            start = time.monotonic()
            while not done.wait(1.0):
                for pid in workers:
                    rss[pid].append((time.monotonic() - start, rss_kb(pid)))

        def one(kind: str, i: int, due: float):
            t0 = time.monotonic()
            try:
                ok = agent.tool_call(i) if kind == "tool call" else agent.proxy(i)
            except httpx.HTTPError:
                ok = False
            results[kind].append((due, time.monotonic() - t0, ok))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        total = int(args.rate * args.seconds)
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            for i in range(total):
                due = i / args.rate
                delay = start + due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(one, "tool call" if i % 2 == 0 else "proxy", i, due)
        elapsed = time.monotonic() - start
        done.set()
        sampler.join()

        print(f"sent {total} requests in {elapsed:.1f} s ({total / elapsed:.1f}/s)")
        errors = 0
        for kind, rows in results.items():
            lat = sorted(d for _, d, _ in rows)
            bad = sum(1 for *_, ok in rows if not ok)
            errors += bad
            p50 = statistics.median(lat) * 1000
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
            print(f"  {kind:9}: {len(rows)} requests, {bad} errors, p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        flat = True
        print("  worker RSS (MB): after warm-up -> end (growth)")
        for pid, samples in rss.items():
            warm = [kb for t, kb in samples if t >= args.warmup]
            if not warm:
                continue
            first, last = warm[0], max(warm[-5:])
            growth = (last - first) / first * 100 if first else 0.0
            flat = flat and growth < 10
            print(f"    {pid}: {first / 1024:.1f} -> {last / 1024:.1f} ({growth:+.1f} %)")
        print(f"goal: zero errors ({'met' if errors == 0 else 'NOT met'}), RSS growth < 10 % after warm-up "
              f"({'met' if flat else 'NOT met'})")
        return 0 if errors == 0 and flat else 1
    finally:
        cluster.close()
        stop(upstream)
        echo.shutdown()


if __name__ == "__main__":
    sys.exit(main())
