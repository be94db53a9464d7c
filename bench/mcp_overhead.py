"""What Portcullis adds to a tool call, measured side by side in ONE interleaved run.

Starts a local upstream (the mcp SDK's MCPServer, one `echo` tool, JSON answers), a bare
pass-through forwarder (bench/forwarder.py: plain WSGI, kept-alive httpx, no parsing) and
Portcullis (fresh SQLite instance, the upstream registered, one virtual key), both under
gunicorn with the project's gunicorn.conf.py. Then, in blocks that rotate the order, it makes
`tools/call`s directly, through the forwarder and through /mcp: sequentially, and with
--clients concurrent clients. Prints p50/p99 latency, calls/s, CPU ms per call of each
server's process tree (gunicorn master + workers), the upstream requests per call, and the
ratios the targets are stated in.

With --jwt a fourth target calls Portcullis with an OAuth access token (a JWT its authorization
server signed, user mode) instead of the virtual key, and the run prints what verifying a JWT
adds to a call against the key (target: under 0.3 ms at p50).

usage: .venv/bin/python bench/mcp_overhead.py [--calls 2000] [--blocks 10] [--clients 8] [--jwt]
"""
from __future__ import annotations

import argparse
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
from bench.proctree import tree_cpu_seconds  # noqa: E402



# The gateway's instance: the upstream registered, a person with a key, and an OAuth consent of
# theirs (user mode) with an access token, as the authorization server would have issued it.
SETUP = """
from app.models import Login, OAuthClient, OAuthConsent, User
from app.oauth_server import keys, tokens
from app.ops.keys import create_key
from app.ops.servers import create_server
s = create_server({'name': 'bench', 'url': '%(url)s'})
user = User(email='bench@example.com', password_hash='-')
db.session.add(user)
db.session.flush()
k, secret = create_key({'name': 'bench', 'owner_id': user.id,
                        'mcp_servers': [{'server_id': s.id, 'tools': None}]}, source='api')
keys.ensure()
login, _ = Login.start(user, 24, '127.0.0.1', 'bench')
client = OAuthClient(client_id='bench-client', client_name='bench', redirect_uris=['http://127.0.0.1/cb'],
                     grant_types=['authorization_code'], response_types=['code'])
db.session.add_all([login, client])
db.session.flush()
consent = OAuthConsent(client_pk=client.id, user_id=user.id, mode='user', login_id=login.id, scope='mcp',
                       resource=app.config['PORTCULLIS_BASE_URL'] + '/mcp')
db.session.add(consent)
db.session.commit()
token, _ = tokens.issue(user_id=user.id, mode='user', key_id=None, grant_id=consent.id, login_id=login.id,
                        client_id='bench-client', scope='mcp', resource=consent.resource)
print(secret, token)
"""


class Target:
    def __init__(self, name: str, url: str, tool: str, headers: dict, proc: subprocess.Popen | None):
        self.name, self.url, self.tool, self.headers, self.proc = name, url, tool, headers, proc
        self.seq: list[float] = []
        self.conc_calls = 0
        self.conc_seconds = 0.0
        self.cpu = 0.0
        self.cpu_calls = 0

    def session(self) -> tuple[httpx.Client, dict]:
        """A client that has initialized an MCP session, and the headers to use after."""
        http = httpx.Client(timeout=30, trust_env=False)
        base = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **self.headers}
        r = http.post(self.url, headers=base, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}})
        r.raise_for_status()
        headers = {**base, "MCP-Protocol-Version": "2025-11-25"}
        if "mcp-session-id" in r.headers:
            headers["Mcp-Session-Id"] = r.headers["mcp-session-id"]
        http.post(self.url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return http, headers

    def call(self, http: httpx.Client, headers: dict, i: int) -> None:
        r = http.post(self.url, headers=headers, json={"jsonrpc": "2.0", "id": i, "method": "tools/call",
                                                       "params": {"name": self.tool, "arguments": {"text": "hi"}}})
        if r.status_code != 200 or r.json()["result"]["content"][0]["text"] != "hi":
            raise RuntimeError(f"{self.name}: unexpected answer {r.status_code} {r.text[:200]}")


def run_sequential(t: Target, n: int) -> None:
    http, headers = t.session()
    try:
        t.call(http, headers, 0)  # warm the connection
        before = tree_cpu_seconds(t.proc.pid) if t.proc else 0.0
        for i in range(n):
            start = time.perf_counter()
            t.call(http, headers, i + 1)
            t.seq.append(time.perf_counter() - start)
        if t.proc:
            t.cpu += tree_cpu_seconds(t.proc.pid) - before
            t.cpu_calls += n
    finally:
        http.close()


def run_concurrent(t: Target, clients: int, per_client: int) -> None:
    sessions = [t.session() for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)

    def worker(http, headers):
        barrier.wait()
        for i in range(per_client):
            t.call(http, headers, i + 1)

    threads = [threading.Thread(target=worker, args=s) for s in sessions]
    for th in threads:
        th.start()
    before = tree_cpu_seconds(t.proc.pid) if t.proc else 0.0
    barrier.wait()
    start = time.perf_counter()
    for th in threads:
        th.join()
    t.conc_seconds += time.perf_counter() - start
    t.conc_calls += clients * per_client
    if t.proc:
        t.cpu += tree_cpu_seconds(t.proc.pid) - before
        t.cpu_calls += clients * per_client
    for http, _ in sessions:
        http.close()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000, help="sequential calls per target")
    ap.add_argument("--blocks", type=int, default=10)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--concurrent-calls", type=int, default=2400, help="calls per target with --clients clients")
    ap.add_argument("--jwt", action="store_true", help="also call Portcullis with an OAuth access token")
    args = ap.parse_args()

    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            up_port, fw_port, gw_port = free_port(), free_port(), free_port()
            upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)])
            procs.append(upstream)
            up_url = f"http://127.0.0.1:{up_port}/mcp"
            wait_ready(upstream, up_url)

            quiet = ["--access-logfile", "/dev/null", "--error-logfile", f"{tmp}/gunicorn.log"]
            forwarder = serve("bench.forwarder:app", {**os.environ, "FORWARD_TO": up_url, "PORT": str(fw_port)}, *quiet)
            procs.append(forwarder)

            env, printed = gateway_instance(tmp, gw_port, SETUP % {"url": up_url},
                                            PORTCULLIS_ACCESS_TOKEN_SECONDS="86400")
            key, token = printed.split()
            gateway = serve("wsgi:app", env, *quiet)
            procs.append(gateway)
            wait_ready(forwarder, f"http://127.0.0.1:{fw_port}/")
            wait_ready(gateway, f"http://127.0.0.1:{gw_port}/login")

            targets = [
                Target("direct", up_url, "echo", {}, None),
                Target("forwarder", f"http://127.0.0.1:{fw_port}/mcp", "echo", {}, forwarder),
                Target("portcullis", f"http://127.0.0.1:{gw_port}/mcp", "bench__echo",
                       {"Authorization": f"Bearer {key}"}, gateway),
            ]
            if args.jwt:
                targets.append(Target("portcullis-jwt", f"http://127.0.0.1:{gw_port}/mcp", "bench__echo",
                                      {"Authorization": f"Bearer {token}"}, gateway))
            for t in targets:  # warm-up (imports, pools, caches), not measured
                http, headers = t.session()
                for i in range(50):
                    t.call(http, headers, i)
                http.close()

            count = lambda: int(httpx.get(f"http://127.0.0.1:{up_port}/count", timeout=5).text)  # noqa: E731
            per_block = max(1, args.calls // args.blocks)
            conc_per_client = max(1, args.concurrent_calls // args.blocks // args.clients)
            upstream_requests = {t.name: 0 for t in targets}
            calls_made = {t.name: 0 for t in targets}
            for block in range(args.blocks):
                order = targets[block % len(targets):] + targets[:block % len(targets)]  # rotate who goes first
                for t in order:
                    before = count()
                    run_sequential(t, per_block)
                    run_concurrent(t, args.clients, conc_per_client)
                    # Each run opens 1 + clients sessions (initialize + notifications/initialized):
                    # direct and the forwarder pass those to the upstream; Portcullis answers them itself.
                    handshakes = 2 * (1 + args.clients)
                    own = t.name.startswith("portcullis")
                    upstream_requests[t.name] += count() - before - (0 if own else handshakes)
                    calls_made[t.name] += per_block + 1 + args.clients * conc_per_client  # + 1 warm call
        finally:
            for p in reversed(procs):
                stop(p)

    direct, fwd, pc = targets[:3]
    print(f"\n{args.blocks} interleaved blocks; {len(direct.seq)} sequential calls and "
          f"{direct.conc_calls} calls with {args.clients} concurrent clients per target\n")
    print(f"{'target':<12}{'p50 ms':>9}{'p99 ms':>9}{'seq calls/s':>13}{f'{args.clients}-client calls/s':>20}"
          f"{'CPU ms/call':>13}{'upstream req/call':>19}")
    for t in targets:
        cpu = f"{t.cpu / t.cpu_calls * 1000:.3f}" if t.cpu_calls else "-"
        print(f"{t.name:<12}{pct(t.seq, .5):>9.3f}{pct(t.seq, .99):>9.3f}{len(t.seq) / sum(t.seq):>13.0f}"
              f"{t.conc_calls / t.conc_seconds:>20.0f}{cpu:>13}"
              f"{upstream_requests[t.name] / calls_made[t.name]:>19.3f}")
    added_fwd = pct(fwd.seq, .5) - pct(direct.seq, .5)
    added_pc = pct(pc.seq, .5) - pct(direct.seq, .5)
    lat_ratio = added_pc / added_fwd if added_fwd > 0 else float("inf")
    cpu_ratio = (pc.cpu / pc.cpu_calls) / (fwd.cpu / fwd.cpu_calls)
    tput_ratio = (pc.conc_calls / pc.conc_seconds) / (fwd.conc_calls / fwd.conc_seconds)
    per_call = upstream_requests["portcullis"] / calls_made["portcullis"]
    print()
    print(f"latency added at p50: forwarder {added_fwd:.3f} ms, portcullis {added_pc:.3f} ms "
          f"-> ratio {lat_ratio:.2f} (target <= 1.5)")
    print(f"gateway CPU per call vs forwarder: {cpu_ratio:.2f} (target <= 1.5)")
    print(f"throughput with {args.clients} clients vs forwarder: {tput_ratio:.2f} (target >= 0.85)")
    print(f"upstream requests per portcullis tools/call: {per_call:.3f} (target exactly 1)")
    if args.jwt:
        jwt = targets[3]
        print(f"an OAuth access token instead of the key adds {pct(jwt.seq, .5) - pct(pc.seq, .5):+.3f} ms at p50, "
              f"{(jwt.cpu / jwt.cpu_calls - pc.cpu / pc.cpu_calls) * 1000:+.3f} ms of CPU per call (target < 0.3 ms); "
              f"upstream requests per call {upstream_requests[jwt.name] / calls_made[jwt.name]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
