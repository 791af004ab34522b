"""The caps on the size of one subscription request, checked by the subscription handler
before anything runs: a request is refused whole, whatever the caller's request rate.
(How many queues a user may hold is the engine's: `server.engine.quotas`.)
"""

from __future__ import annotations

from server.engine.abuse import REFUSED_SUBSCRIPTION_SIZE, AbuseMonitor
from server.engine.errors import BadRequest

# Channels named in one subscription request. Zulip's clients subscribe a user to a
# handful at a time; an organization's whole channel list rarely exceeds a thousand.
MAX_SUBSCRIPTION_CHANNELS = 1_000
# Users named (`principals`) in one subscription request: enough to add a large team
# to a channel in one call.
MAX_SUBSCRIPTION_PRINCIPALS = 1_000
# Channels x users in one request: each pair is a subscription row and events to every
# subscriber's queues, all in one transaction. 100,000 (all of a 10,000-user realm to
# ten channels) takes seconds; the product of the two caps above would take an hour.
MAX_SUBSCRIPTION_PAIRS = 100_000


def check_subscription_request(
    user_id: int, channels: int, principals: int | None, monitor: AbuseMonitor | None
) -> None:
    """Refuse (400 BAD_REQUEST, before anything changes) a subscription request naming
    too many channels or users. `principals` None: the caller alone."""
    problem = None
    if channels > MAX_SUBSCRIPTION_CHANNELS:
        problem = f"{channels} channels (at most {MAX_SUBSCRIPTION_CHANNELS})"
    elif principals is not None and principals > MAX_SUBSCRIPTION_PRINCIPALS:
        problem = f"{principals} principals (at most {MAX_SUBSCRIPTION_PRINCIPALS})"
    elif channels * (principals or 1) > MAX_SUBSCRIPTION_PAIRS:
        problem = (
            f"{channels} channels for {principals} users "
            f"(at most {MAX_SUBSCRIPTION_PAIRS} subscriptions)"
        )
    if problem is None:
        return
    if monitor is not None:
        monitor.record(REFUSED_SUBSCRIPTION_SIZE, f"user {user_id}", problem)
    raise BadRequest(f"Too many subscriptions in one request: {problem}.")
