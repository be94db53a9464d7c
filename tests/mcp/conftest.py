"""Fixtures shared by the MCP tests that need an upstream of the initialize era only."""
import pytest

from tests.support.mcp import start_upstream, stop


@pytest.fixture(scope="module")
def legacy_url():
    """A stateful SDK upstream that refuses 2026-07-28 (server/discover -> 404 -32601), one per module."""
    proc, url = start_upstream("--name", "old", "--stateful", "--legacy-only")
    yield url
    stop(proc)
