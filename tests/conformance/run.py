"""Run the MCP conformance suite (server mode) against /mcp/<name> of Portcullis, which
forwards to the conformance fixture upstream (fixture_server.py).

Portcullis runs as `make run` would (flask db upgrade, gunicorn with gunicorn.conf.py) on a
fresh SQLite instance, with anonymous development mode on (PORTCULLIS_ENFORCE_AUTH=false), the
fixture registered as an allow-all server. Needs `conformance` (npm
@modelcontextprotocol/conformance, run by Node 22) on PATH; .ci/run installs it.
usage: python tests/conformance/run.py [extra conformance args]
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.mcp import free_port, gateway_instance, serve, stop, wait_ready  # noqa: E402

HERE = Path(__file__).parent
NAME = "conformance"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        up_port, gw_port = free_port(), free_port()
        upstream = subprocess.Popen([sys.executable, str(HERE / "fixture_server.py"), "--port", str(up_port)],
                                    stderr=subprocess.DEVNULL)
        procs = [upstream]
        try:
            wait_ready(upstream, f"http://127.0.0.1:{up_port}/mcp")
            env, _ = gateway_instance(
                tmp, gw_port, "from app.ops.servers import create_server\n"
                f"create_server({{'name': '{NAME}', 'url': 'http://127.0.0.1:{up_port}/mcp',"
                " 'allow_on_all_virtual_keys': True, 'read_timeout': 5})\n"
                "db.session.commit()", PORTCULLIS_ENFORCE_AUTH="false")
            gateway = serve("wsgi:app", env, "--access-logfile", "/dev/null", stderr=subprocess.DEVNULL)
            procs.append(gateway)
            wait_ready(gateway, f"http://127.0.0.1:{gw_port}/login")
            cmd = ["conformance", "server", "--url", f"http://127.0.0.1:{gw_port}/mcp/{NAME}",
                   "--expected-failures", str(HERE / "expected-failures.yml"), *sys.argv[1:]]
            return subprocess.run(cmd, timeout=600).returncode
        finally:
            for proc in reversed(procs):
                stop(proc)


if __name__ == "__main__":
    sys.exit(main())
