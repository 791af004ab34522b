"""Behind a proxy: with `EVENTQ_TRUSTED_PROXY=on` the address budgets count each client
by the proxy's X-Real-IP; without it, every request counts as the proxy's address."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests

from tests.helpers.server import live_server
from tests.helpers.sqlite_realm import sqlite_sample_realm

TIMEOUT_SECS = 10.0


def _status(url: str, client_address: str) -> int:
    answer = requests.get(
        f"{url}/api/v1/server_settings",
        headers={"X-Real-IP": client_address},
        timeout=TIMEOUT_SECS,
    )
    return answer.status_code


@pytest.mark.parametrize("trusted", [True, False])
def test_address_budgets_follow_the_proxys_client_address(tmp_path: Path, trusted: bool) -> None:
    env = {
        "EVENTQ_RATE_LIMIT_ADDRESS": "60:2",
        "EVENTQ_TRUSTED_PROXY": "on" if trusted else "off",
    }
    with (
        sqlite_sample_realm(tmp_path) as (database_url, _),
        live_server(database_url, env) as server,
    ):
        assert [_status(server.url, "10.0.0.1") for _ in range(3)] == [200, 200, 429]
        # Another client behind the same proxy has a budget of its own only if the
        # proxy's word is trusted.
        assert _status(server.url, "10.0.0.2") == (200 if trusted else 429)
