"""The Tornado applications: every route of the API (`make_app`), and the operational
endpoints alone for a listener of their own (`make_ops_app`). The process that serves
them is `server.ops.serve`."""

from __future__ import annotations

import tornado.web

from server.api.access_log import log_request
from server.api.body_limits import BodyBoundedApplication, BodyBudget
from server.api.handlers.events import (
    EventsHandler,
    OpenApiHandler,
    RegisterHandler,
    ServerSettingsHandler,
)
from server.api.handlers.ops import ADMIN_ROUTES, METRICS_ROUTES, PROBE_ROUTES
from server.api.metrics import DEFAULT_READY_MAX_LAG_SECS, FigureReader
from server.api.ratelimit import RateLimiter, RateLimits
from server.api.request import NotFoundHandler
from server.engine.service import EventService


def make_app(
    service: EventService,
    rate_limiter: RateLimiter | None = None,
    *,
    serve_metrics: bool = True,
    figures: FigureReader | None = None,
    ready_max_lag_secs: float = DEFAULT_READY_MAX_LAG_SECS,
    body_budget: BodyBudget | None = None,
) -> BodyBoundedApplication:
    """The application with every route of docs/architecture.md §6.

    `rate_limiter` None: Zulip's default limits (`server.api.ratelimit.RateLimits()`).
    `serve_metrics` False: `/metrics` is left to a listener of its own (`make_ops_app`).
    `body_budget` None: a budget of its own at the default size (`server.api.body_limits`).
    """
    from server.api.handlers.client_extras import CLIENT_EXTRA_ROUTES
    from server.api.handlers.message_edits import MESSAGE_EDIT_ROUTES
    from server.api.handlers.message_queries import MESSAGE_QUERY_ROUTES
    from server.api.handlers.messages import MESSAGE_ROUTES
    from server.api.handlers.page import PAGE_ROUTES
    from server.api.handlers.presence import PRESENCE_ROUTES
    from server.api.handlers.rest import REST_ROUTES
    from server.api.handlers.subscription_properties import SUBSCRIPTION_PROPERTY_ROUTES
    from server.api.handlers.typing import TYPING_ROUTES

    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/api/v1/server_settings", ServerSettingsHandler),
        (r"/api/v1/openapi.json", OpenApiHandler),
        (r"/api/v1/register", RegisterHandler),
        (r"/api/v1/events", EventsHandler),
        *REST_ROUTES,
        *SUBSCRIPTION_PROPERTY_ROUTES,
        *CLIENT_EXTRA_ROUTES,
        *MESSAGE_ROUTES,
        *MESSAGE_QUERY_ROUTES,
        *MESSAGE_EDIT_ROUTES,
        *PRESENCE_ROUTES,
        *TYPING_ROUTES,
        *ADMIN_ROUTES,
        *PROBE_ROUTES,
        *(METRICS_ROUTES if serve_metrics else []),
        *PAGE_ROUTES,
    ]
    return BodyBoundedApplication(
        routes,
        body_budget=body_budget or BodyBudget(monitor=service.abuse),
        service=service,
        rate_limiter=rate_limiter or RateLimiter(RateLimits(), service.abuse),
        figures=figures or FigureReader(service),
        ready_max_lag_secs=ready_max_lag_secs,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


def make_ops_app(
    service: EventService,
    rate_limiter: RateLimiter,
    figures: FigureReader,
    ready_max_lag_secs: float = DEFAULT_READY_MAX_LAG_SECS,
    body_budget: BodyBudget | None = None,
) -> BodyBoundedApplication:
    """`/metrics`, `/healthz` and `/readyz` alone, for `EVENTQ_METRICS_ADDRESS`."""
    return BodyBoundedApplication(
        [*METRICS_ROUTES, *PROBE_ROUTES],
        body_budget=body_budget or BodyBudget(monitor=service.abuse),
        service=service,
        rate_limiter=rate_limiter,
        figures=figures,
        ready_max_lag_secs=ready_max_lag_secs,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )
