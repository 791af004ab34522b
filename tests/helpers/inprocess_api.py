"""The real HTTP application served in the test's own process, for tests that must see
what a request does to the database: its SQL statements (`count_statements` listens
on the engine, which a separate `eventq serve` process does not share) or a change
made between two steps of one request.

The event service is not started: REST handlers only authenticate and run actions on
its database threads, and with no consumer, watcher or GC running, every statement
counted during a request is the request's own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlencode

import tornado.httpclient
import tornado.httpserver
import tornado.netutil

from models.database import Database
from server.api.app import make_app
from server.engine.service import EventService
from tests.helpers.api import Answer, encode_params
from tests.helpers.openapi import validate_response

REQUEST_TIMEOUT_SECS = 30.0


class InProcessApi:
    """Requests to the application bound on a loopback port of this process."""

    def __init__(self, base_url: str, service: EventService) -> None:
        self.base_url = base_url
        # The application's service, for tests that look at its state (its credentials
        # cache) between requests.
        self.service = service
        self.client = tornado.httpclient.AsyncHTTPClient()

    async def call(
        self, email: str, api_key: str, method: str, path: str, params: dict[str, Any]
    ) -> Answer:
        """One request with Zulip's parameter encoding, its answer checked against the
        OpenAPI document."""
        token = base64.b64encode(f"{email}:{api_key}".encode()).decode()
        response = await self.client.fetch(
            f"{self.base_url}/api/v1{path}",
            method=method,
            body=urlencode(encode_params(params)),
            headers={
                "Authorization": f"Basic {token}",
                # Tornado parses a form body only when told it is one (DELETE included).
                "Content-Type": "application/x-www-form-urlencoded",
            },
            allow_nonstandard_methods=True,
            raise_error=False,
            request_timeout=REQUEST_TIMEOUT_SECS,
        )
        body = json.loads(response.body)
        validate_response(method, path, response.code, body)
        return Answer(response.code, body)


@asynccontextmanager
async def inprocess_api(db: Database) -> AsyncIterator[InProcessApi]:
    """The application on a free loopback port, over `db`, for the `with` block."""
    service = EventService(db)
    [listener] = tornado.netutil.bind_sockets(0, "127.0.0.1")
    http = tornado.httpserver.HTTPServer(make_app(service))
    http.add_sockets([listener])
    try:
        yield InProcessApi(f"http://127.0.0.1:{listener.getsockname()[1]}", service)
    finally:
        http.stop()
        await http.close_all_connections()
        await service.stop()
