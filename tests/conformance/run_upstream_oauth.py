"""Run the conformance suite's client-side authorization scenarios (`--suite auth`, the
2025-11-25 and earlier ones the installed release has) against Portcullis's upstream OAuth
client, through upstream_oauth_client.py, with the baseline upstream-oauth-expected-failures.yml.
Needs `conformance` (npm @modelcontextprotocol/conformance 0.1.16 on Node 22) on PATH.
usage: python tests/conformance/run_upstream_oauth.py [extra conformance args]
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BASE_URL = "https://conformance-test.local"


def main() -> int:
    client = f"{sys.executable} {HERE / 'upstream_oauth_client.py'}"
    cmd = ["conformance", "client", "--command", client, "--suite", "auth", "--timeout", "120000",
           "--expected-failures", str(HERE / "upstream-oauth-expected-failures.yml"), *sys.argv[1:]]
    # The wrapper's Portcullis gets an HTTPS base URL on a public name, so that it identifies
    # itself by its client ID metadata document where the suite's server supports them (auth/
    # basic-cimd). Nobody has to reach that name: the suite's authorization server approves at
    # once and the wrapper takes the redirect to /connect/callback itself.
    env = {**os.environ, "PORTCULLIS_BASE_URL": BASE_URL}
    return subprocess.run(cmd, timeout=900, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
