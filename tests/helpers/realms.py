"""A realm with one user of every viewpoint and one channel of every kind.

Users: owner, admin, member (subscribed to every channel), loner (a member subscribed
to none), guest (subscribed to every channel), outsider_guest (subscribed to none).
Channels: public, private, web_public.
"""

from __future__ import annotations

from dataclasses import dataclass

from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user
from models.database import Database
from models.tables import Role

VIEWPOINTS = ("owner", "admin", "member", "loner", "guest", "outsider_guest")
CHANNEL_KINDS = ("public", "private", "web_public")


@dataclass
class SampleRealm:
    """Ids of the sample realm's users and channels, by name."""

    realm_id: int
    users: dict[str, int]
    streams: dict[str, int]
    api_keys: dict[str, str]
    emails: dict[str, str]


def make_sample_realm(db: Database, subdomain: str = "zulip") -> SampleRealm:
    """Create the sample realm (not verified: the tests verify actions on top of it)."""
    roles = {
        "owner": Role.OWNER,
        "admin": Role.ADMINISTRATOR,
        "member": Role.MEMBER,
        "loner": Role.MEMBER,
        "guest": Role.GUEST,
        "outsider_guest": Role.GUEST,
    }
    with db.write() as session:
        realm = do_create_realm(session, subdomain, "Sample realm")
        realm_id = realm.id
    users: dict[str, int] = {}
    keys: dict[str, str] = {}
    emails: dict[str, str] = {}
    for name in VIEWPOINTS:
        with db.write() as session:
            user = do_create_user(
                session, realm_id, f"{name}@{subdomain}.example.com", name.title(), roles[name]
            )
            users[name], keys[name], emails[name] = user.id, user.api_key, user.email
    streams: dict[str, int] = {}
    for kind in CHANNEL_KINDS:
        with db.write() as session:
            stream = do_create_stream(
                session,
                realm_id,
                kind.replace("_", "-"),
                invite_only=kind == "private",
                is_web_public=kind == "web_public",
            )
            streams[kind] = stream.id
    with db.write() as session:
        bulk_add_subscriptions(
            session, realm_id, [users["member"], users["guest"]], list(streams.values())
        )
    return SampleRealm(realm_id, users, streams, keys, emails)
