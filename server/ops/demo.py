"""The demo realm `make run` creates, and the connection help it prints."""

from __future__ import annotations

from dataclasses import dataclass

from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user
from models.database import Database
from models.queries import get_realm, get_user_by_email
from models.tables import Role

DEMO_REALM = "demo"
DEMO_USERS = (
    ("iago@demo.example.com", "Iago", Role.OWNER),
    ("hamlet@demo.example.com", "King Hamlet", Role.MEMBER),
    ("othello@demo.example.com", "Othello", Role.MEMBER),
    ("polonius@demo.example.com", "Polonius", Role.GUEST),
)
DEMO_STREAMS = (("general", False, False), ("denmark", False, True), ("council", True, False))


@dataclass(frozen=True)
class DemoLogin:
    """The demo owner's credentials."""

    email: str
    api_key: str


def ensure_demo_realm(database_url: str) -> DemoLogin:
    """Create the demo realm once; later runs reuse it."""
    db = Database(database_url)
    try:
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
    finally:
        db.dispose()


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
            '  zulip client:   python -c "import zulip; c = zulip.Client('
            f"email='{demo.email}', api_key='{demo.api_key}', site='{url}'); "
            'print(c.register())"',
        ]
    print("\n".join(lines), flush=True)
