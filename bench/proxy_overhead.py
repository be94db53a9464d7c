"""What the proxy route adds, measured in ONE interleaved run.

Starts a local upstream HTTP server (tests/upstream/http_echo.py: threaded http.server, echoes
requests, serves and swallows large bodies), Portcullis under gunicorn with the project's
gunicorn.conf.py (fresh SQLite instance, one service pointing at the upstream, one virtual key)
and, as the floor of any Python gateway served that way, the bare pass-through forwarder of
bench/forwarder.py under the same gunicorn settings. Then:

1. GET latency, direct to the upstream vs through the forwarder vs through
   /proxy/<service>/..., in blocks that rotate which goes first, each on its own kept-alive
   connection: p50, p99 and the ratios, against the target p50(proxy) <= 1.3 x p50(direct) + 1 ms;
2. a 200 MB download and a 200 MB upload through the proxy (and directly, for the throughput
   beside it), with the gateway's resident memory (gunicorn master + workers, sampled every
   10 ms) before and at its peak, against the target: the peak grows by less than 50 MB.

usage: .venv/bin/python bench/proxy_overhead.py [--requests 3000] [--blocks 10] [--megabytes 200]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_ready  # noqa: E402
from tests.upstream.http_echo import PATTERN  # noqa: E402
from bench.proctree import tree_cpu_seconds, tree_rss  # noqa: E402

MB = 1024 * 1024


class PeakMemory:
    """Samples a process tree's RSS every 10 ms while in use."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self.before = tree_rss(self.pid)
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def timed_gets(url: str, headers: dict, n: int, out: list[float]) -> None:
    with httpx.Client(headers=headers, timeout=30, trust_env=False) as http:
        for _ in range(20):  # warm the connection
            http.get(url)
        for _ in range(n):
            start = time.perf_counter()
            r = http.get(url)
            out.append(time.perf_counter() - start)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")


def download(url: str, headers: dict, size: int) -> float:
    start = time.perf_counter()
    got = 0
    with httpx.Client(headers=headers, timeout=120, trust_env=False) as http:
        with http.stream("GET", f"{url}/download?bytes={size}") as r:
            r.raise_for_status()
            for chunk in r.iter_raw(256 * 1024):
                got += len(chunk)
    if got != size:
        raise RuntimeError(f"download: got {got} of {size} bytes")
    return time.perf_counter() - start


def upload(url: str, headers: dict, size: int) -> float:
    piece = PATTERN * 4  # 256 KiB

    def body():
        left = size
        while left > 0:
            yield piece[:left]
            left -= len(piece)

    expected = hashlib.sha256()
    left = size
    while left > 0:
        expected.update(piece[:left])
        left -= len(piece)
    start = time.perf_counter()
    with httpx.Client(headers=headers, timeout=120, trust_env=False) as http:
        r = http.put(f"{url}/upload", content=body(), headers={"Content-Length": str(size)})
    elapsed = time.perf_counter() - start
    answer = r.json()
    if r.status_code != 200 or answer["body_length"] != size or answer["body_sha256"] != expected.hexdigest():
        raise RuntimeError(f"upload: {r.status_code} {r.text[:200]}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000, help="GETs per target")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--megabytes", type=int, default=200)
    args = ap.parse_args()
    size = args.megabytes * MB

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, gw_port, fw_port = free_port(), free_port(), free_port()
            upstream = subprocess.Popen([sys.executable, str(ROOT / "tests" / "upstream" / "http_echo.py"),
                                         "--port", str(up_port)])
            procs.append(upstream)
            up_url = f"http://127.0.0.1:{up_port}"
            wait_ready(upstream, up_url + "/ready")

            env, key = gateway_instance(tmp, gw_port, (
                "from app.ops.services import create_service\nfrom app.ops.keys import create_key\n"
                f"s = create_service({{'name': 'bench', 'base_url': '{up_url}', 'secret': 'bench-root-secret'}})\n"
                "db.session.flush()\n"
                "k, secret = create_key({'name': 'bench', 'rate_limit_per_minute': 100000,"
                " 'services': [{'service_id': s.id, 'scope': 'write'}]}, source='api')\n"
                "db.session.commit()\nprint(secret)"))
            quiet = ["--access-logfile", "/dev/null", "--error-logfile", f"{tmp}/gunicorn.log"]
            gateway = serve("wsgi:app", env, *quiet)
            procs.append(gateway)
            forwarder = serve("bench.forwarder:app", {**os.environ, "FORWARD_TO": up_url + "/echo?q=1",
                                                      "PORT": str(fw_port)}, *quiet)
            procs.append(forwarder)
            wait_ready(gateway, f"http://127.0.0.1:{gw_port}/login")
            wait_ready(forwarder, f"http://127.0.0.1:{fw_port}/")

            targets = {"direct": (up_url, {}),
                       "forwarder": (f"http://127.0.0.1:{fw_port}", {}),
                       "proxy": (f"http://127.0.0.1:{gw_port}/proxy/bench", {"X-Virtual-Key": key})}
            latencies: dict[str, list[float]] = {name: [] for name in targets}
            servers = {"forwarder": forwarder.pid, "proxy": gateway.pid}
            cpu = {name: 0.0 for name in servers}
            per_block = max(1, args.requests // args.blocks)
            names = list(targets)
            for block in range(args.blocks):
                for name in names[block % 3:] + names[:block % 3]:  # rotate who goes first
                    base, headers = targets[name]
                    before = tree_cpu_seconds(servers[name]) if name in servers else 0.0
                    timed_gets(base + "/echo?q=1", headers, per_block, latencies[name])
                    if name in servers:
                        cpu[name] += tree_cpu_seconds(servers[name]) - before

            transfers = {}
            for what, fn in (("download", download), ("upload", upload)):
                for name in ("direct", "proxy"):
                    base, headers = targets[name]
                    if name == "proxy":
                        with PeakMemory(gateway.pid) as mem:
                            seconds = fn(base, headers, size)
                        transfers[(what, name)] = (seconds, mem.before, mem.peak)
                    else:
                        transfers[(what, name)] = (fn(base, headers, size), None, None)
        finally:
            for p in reversed(procs):
                stop(p)

    direct, fwd, proxy = latencies["direct"], latencies["forwarder"], latencies["proxy"]
    d50, f50, p50 = pct(direct, .5), pct(fwd, .5), pct(proxy, .5)
    print(f"\nGET latency: {args.blocks} interleaved blocks, {len(direct)} requests per target "
          f"(gunicorn {os.environ.get('PORTCULLIS_WORKERS', '1')} worker x {os.environ.get('PORTCULLIS_THREADS', '8')} "
          "threads)\n")
    print(f"{'target':<11}{'p50 ms':>9}{'p99 ms':>9}{'server CPU ms/request':>23}")
    for name in targets:
        # (the warm-up GETs of each block are counted in the CPU figure: 20 per block)
        per = f"{cpu[name] * 1000 / (len(latencies[name]) + 20 * args.blocks):.3f}" if name in cpu else "-"
        print(f"{name:<11}{pct(latencies[name], .5):>9.3f}{pct(latencies[name], .99):>9.3f}{per:>23}")
    allowed = 1.3 * d50 + 1.0
    print(f"\np50 proxy / direct: {p50 / d50:.2f} (+{p50 - d50:.3f} ms); p99 ratio {pct(proxy, .99) / pct(direct, .99):.2f}")
    print(f"target p50 <= 1.3 x direct + 1 ms = {allowed:.3f} ms: {'met' if p50 <= allowed else 'NOT met'}")
    print(f"floor, the bare forwarder under the same gunicorn: +{f50 - d50:.3f} ms at p50 "
          f"({'meets' if f50 <= allowed else 'misses'} that target itself); Portcullis adds +{p50 - f50:.3f} ms to it")
    print(f"\n{args.megabytes} MB bodies (gateway memory: gunicorn master + worker RSS, sampled every 10 ms)\n")
    print(f"{'transfer':<20}{'seconds':>9}{'MB/s':>8}{'RSS before MB':>15}{'peak MB':>9}{'growth MB':>11}")
    worst = 0.0
    for (what, name), (seconds, before, peak) in transfers.items():
        line = f"{what + ' ' + name:<20}{seconds:>9.2f}{args.megabytes / seconds:>8.0f}"
        if before is not None:
            growth = (peak - before) / MB
            worst = max(worst, growth)
            line += f"{before / MB:>15.1f}{peak / MB:>9.1f}{growth:>11.1f}"
        print(line)
    print(f"\ntarget peak memory growth < 50 MB: {'met' if worst < 50 else 'NOT met'} ({worst:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
