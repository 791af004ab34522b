"""An HTTP client for tests that speaks Zulip's encoding and checks every answer
against the OpenAPI document."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
import zulip

from tests.helpers.openapi import validate_response

if TYPE_CHECKING:
    from tests.helpers.realms import SampleRealm
    from tests.helpers.server import LiveServer

# Longer than the server's 55 s heartbeat, as Zulip's clients use 90 s.
POLL_TIMEOUT_SECS = 90.0


@dataclass
class Answer:
    """Status and decoded body of one request."""

    status: int
    body: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.body.get("result") == "success"


def encode_params(params: dict[str, Any]) -> dict[str, str]:
    """Zulip's encoding: strings as they are, everything else JSON-encoded."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


class ApiClient:
    """One user's connection to a live server."""

    def __init__(
        self, base_url: str, email: str, api_key: str, user_agent: str = "eventq-tests/1.0"
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()
        self.session.auth = (email, api_key)
        self.session.headers["User-Agent"] = user_agent

    def call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        timeout: float = POLL_TIMEOUT_SECS,
    ) -> Answer:
        """Send one request and validate the answer against the OpenAPI document."""
        encoded = encode_params(params or {})
        url = f"{self.base_url}/api/v1{path}"
        if method == "GET":
            response = self.session.request(method, url, params=encoded, timeout=timeout)
        else:
            response = self.session.request(method, url, data=encoded, timeout=timeout)
        body = response.json()
        validate_response(method, path, response.status_code, body)
        return Answer(response.status_code, body)

    def ok(self, method: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """`call`, asserting success."""
        answer = self.call(method, path, params)
        assert answer.ok, f"{method} {path} -> {answer.status} {answer.body}"
        return answer.body

    def register(self, **params: Any) -> dict[str, Any]:
        return self.ok("POST", "/register", params)

    def poll(self, queue_id: str, last_event_id: int, dont_block: bool = False) -> Answer:
        return self.call(
            "GET",
            "/events",
            {"queue_id": queue_id, "last_event_id": last_event_id, "dont_block": dont_block},
        )


def zulip_client(server: LiveServer, realm: SampleRealm, name: str) -> Any:
    """The unmodified `zulip` client as the sample realm's user `name`. Its config file is
    empty, so nothing from the developer's ~/.zuliprc is read."""
    return zulip.Client(
        email=realm.emails[name],
        api_key=realm.api_keys[name],
        site=server.url,
        config_file=os.devnull,
    )
