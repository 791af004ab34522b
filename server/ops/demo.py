"""The demo realm `make run` creates, its welcome messages, and the connection help it
prints.

`ensure_demo_realm` creates the realm once (its users, channels and subscriptions) and
then, in a realm that holds no message yet, a few welcome messages as a new Zulip
organization has: two topics of the welcome channel, a topic of another channel and a
direct message to the demo login. A client such as zulip-terminal cannot start on an
empty message list. A restart finds the messages and sends none again; a demo realm
created before the welcome messages existed gets them on its next start.

`print_connection_help` prints a connect command that works as printed, from any
directory: it names the Python interpreter running the server by its absolute path
(the project's `.venv/bin/python` under `make run`), which has the `zulip` package.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

from sqlalchemy import func, select

from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user
from models.database import Database
from models.queries import get_realm, get_user_by_email
from models.tables import Message, Role

DEMO_REALM = "demo"
DEMO_USERS = (
    ("iago@demo.example.com", "Iago", Role.OWNER),
    ("hamlet@demo.example.com", "King Hamlet", Role.MEMBER),
    ("othello@demo.example.com", "Othello", Role.MEMBER),
    ("polonius@demo.example.com", "Polonius", Role.GUEST),
)
DEMO_STREAMS = (("general", False, False), ("denmark", False, True), ("council", True, False))
# The welcome channel of the welcome messages.
WELCOME_CHANNEL = "general"
# The `client` name the welcome messages are sent with.
WELCOME_CLIENT = "eventq demo"
# (sender, channel or None for a direct message to the demo login, topic, content), sent
# in this order.
WELCOME_MESSAGES: tuple[tuple[str, str | None, str, str], ...] = (
    (
        "iago@demo.example.com",
        WELCOME_CHANNEL,
        "welcome to eventq",
        "Welcome to the **eventq demo**! This organization is served by eventq, which "
        "speaks Zulip's API: Zulip's own clients connect to it as they would to Zulip.",
    ),
    (
        "othello@demo.example.com",
        WELCOME_CHANNEL,
        "welcome to eventq",
        "Hello everyone! Messages, unread counts and who is online all arrive as events.",
    ),
    (
        "iago@demo.example.com",
        WELCOME_CHANNEL,
        "things to try",
        "Open this organization in two clients and send a message from one: the other "
        "shows it at once. Restart the server: your clients' queues survive it.",
    ),
    (
        "hamlet@demo.example.com",
        "denmark",
        "castle",
        "Something is rotten in the state of Denmark. (This channel is web-public.)",
    ),
    (
        "hamlet@demo.example.com",
        None,
        "",
        "Hi Iago! This is a direct message: only the two of us see it.",
    ),
)


@dataclass(frozen=True)
class DemoLogin:
    """The demo owner's credentials."""

    email: str
    api_key: str


def ensure_demo_realm(database_url: str) -> DemoLogin:
    """Create the demo realm and its welcome messages once; later runs reuse them."""
    db = Database(database_url)
    try:
        login = _ensure_realm(db)
        _ensure_welcome_messages(db)
        return login
    finally:
        db.dispose()


def _ensure_realm(db: Database) -> DemoLogin:
    """The demo realm's users, channels and subscriptions, created if missing."""
    with db.snapshot() as session:
        realm = get_realm(session, DEMO_REALM)
        if realm is not None:
            owner = get_user_by_email(session, realm.id, DEMO_USERS[0][0])
            if owner is not None:
                return DemoLogin(owner.email, owner.api_key)
    with db.write() as session:
        realm_id = do_create_realm(session, DEMO_REALM, "eventq demo").id
    user_ids = []
    for email, name, role in DEMO_USERS:
        with db.write() as session:
            user_ids.append(do_create_user(session, realm_id, email, name, role).id)
    for name, private, web_public in DEMO_STREAMS:
        with db.write() as session:
            stream_id = do_create_stream(
                session, realm_id, name, invite_only=private, is_web_public=web_public
            ).id
        with db.write() as session:
            members = user_ids if not private else user_ids[:2]
            bulk_add_subscriptions(session, realm_id, members, [stream_id])
    with db.snapshot() as session:
        owner = get_user_by_email(session, realm_id, DEMO_USERS[0][0])
        assert owner is not None, "created just above"
        return DemoLogin(owner.email, owner.api_key)


def _ensure_welcome_messages(db: Database) -> None:
    """Send the welcome messages in one transaction, unless the realm holds a message.

    One transaction: a crash leaves all of them or none, so the check on the next start
    never finds half of them. Two processes starting at once on one database (not a
    thing `make run` or `make cluster` does) could both send them.
    """
    with db.write() as session:
        realm = get_realm(session, DEMO_REALM)
        assert realm is not None, "created by _ensure_realm"
        if session.scalar(select(func.count(Message.id)).where(Message.realm_id == realm.id)):
            return
        users = {email: get_user_by_email(session, realm.id, email) for email, _, _ in DEMO_USERS}
        login = users[DEMO_USERS[0][0]]
        assert login is not None, "created by _ensure_realm"
        for sender_email, channel, topic, content in WELCOME_MESSAGES:
            sender = users[sender_email]
            assert sender is not None, "created by _ensure_realm"
            target: ChannelTarget | DirectTarget = (
                ChannelTarget(channel) if channel is not None else DirectTarget((login.id,))
            )
            check_send_message(session, realm.id, sender.id, target, topic, content, WELCOME_CLIENT)


def print_connection_help(host: str, port: int, demo: DemoLogin | None) -> None:
    """Tell a new user how to connect."""
    url = f"http://{host}:{port}"
    lines = [
        f"eventq is serving on {url}  (Ctrl-C stops it; queues survive a restart)",
        f"  browser page:   {url}/",
        f"  API:            {url}/api/v1/  (OpenAPI: {url}/api/v1/openapi.json)",
    ]
    if demo is not None:
        lines += [
            f"  demo login:     email {demo.email}  API key {demo.api_key}",
            f"  zulip client:   {connect_command(url, demo)}",
        ]
    print("\n".join(lines), flush=True)


def connect_command(url: str, demo: DemoLogin) -> str:
    """A shell command that connects to `url` as the demo login with the `zulip` client
    and prints the answer of its first `register` (`success` and the queue's id).

    The interpreter is the server's own (`sys.executable`, absolute), so the command
    needs neither an activated virtual environment nor the repository as the current
    directory. The script is in double quotes for the shell (readable to a person) and
    uses single quotes itself.
    """
    script = (
        f"import zulip; c = zulip.Client(email='{demo.email}', api_key='{demo.api_key}', "
        f"site='{url}'); r = c.register(event_types=['message']); "
        "print(r['result'], r.get('queue_id'))"
    )
    # Anything a shell would expand inside double quotes: quote it the safe, uglier way.
    quoted = shlex.quote(script) if set(script) & set('"$`\\!') else f'"{script}"'
    return f"{shlex.quote(sys.executable)} -c {quoted}"
