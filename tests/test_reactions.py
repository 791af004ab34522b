"""Emoji reactions (`POST`/`DELETE /messages/{id}/reactions`), on both backends.

Each addition and removal goes through `verify_action`: one `reaction` event of Zulip's
shape to everyone who has the message and the reactor, every user's history (where the
message's `reactions` live) converging, and no event naming a message its recipient may
not read. Zulip's refusals, with their codes and wording, write nothing. The emoji names
map to Zulip's codes for the common names.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy.orm import Session

from actions.errors import ActionError
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.reactions import (
    ReactionAlreadyExists,
    ReactionDoesNotExist,
    ReactionRequest,
    check_add_reaction,
    check_remove_reaction,
)
from models.database import Database
from models.messages.access import get_message
from models.messages.emoji import check_emoji, unicode_code_for_name
from models.outbox import outbox_count
from tests.helpers.realms import SampleRealm
from tests.helpers.verify import verify_action

CLIENT = "eventq-tests"


def send(db: Database, realm: SampleRealm, target: ChannelTarget | DirectTarget) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users["member"], target, "topic", "hi", CLIENT
        )


def reacting(
    realm: SampleRealm, user: str, message_id: int, request: ReactionRequest, add: bool = True
) -> Callable[[Session], None]:
    act = check_add_reaction if add else check_remove_reaction

    def action(session: Session) -> None:
        act(session, realm.realm_id, realm.users[user], message_id, request)

    return action


def refused(db: Database, realm: SampleRealm, action: Callable[[Session], None]) -> ActionError:
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
    with pytest.raises(ActionError) as caught, db.write() as session:
        action(session)
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before
    return caught.value


def test_zulips_common_names_map_to_zulips_codes() -> None:
    expected = {
        "octopus": "1f419",
        "+1": "1f44d",
        "thumbs_up": "1f44d",
        "tada": "1f389",
        "smile": "1f604",
        "heart": "2764",
        "joy": "1f602",
    }
    assert {name: unicode_code_for_name(name) for name in expected} == expected
    # A name eventq does not know is taken with its code; a code it does not know is not.
    assert check_emoji("zulips_own_name", "1f419", None).code == "1f419"
    with pytest.raises(ActionError, match="^Invalid emoji code$"):
        check_emoji("octopus", "fffff", None)
    with pytest.raises(ActionError, match="^Invalid emoji name$"):
        check_emoji("octopus", "1f44d", None)
    with pytest.raises(ActionError, match="^Emoji 'no_such_emoji' does not exist$"):
        check_emoji("no_such_emoji", None, None)
    assert check_emoji("zulip", None, None).reaction_type == "zulip_extra_emoji"


def test_adding_and_removing_a_reaction_converges(db: Database, realm: SampleRealm) -> None:
    message_id = send(db, realm, ChannelTarget(realm.streams["public"]))
    holders = {realm.users["member"], realm.users["guest"]}
    # The loner reads the public channel's history: they may react, and hear of it.
    verified = verify_action(
        db, realm.realm_id, reacting(realm, "loner", message_id, ReactionRequest("octopus"))
    )
    [stored] = verified.events
    assert set(stored.user_ids) == holders | {realm.users["loner"]}
    assert stored.event == {
        "type": "reaction",
        "op": "add",
        "user_id": realm.users["loner"],
        "user": {
            "user_id": realm.users["loner"],
            "email": realm.emails["loner"],
            "full_name": "Loner",
            "is_mirror_dummy": False,
        },
        "message_id": message_id,
        "emoji_name": "octopus",
        "emoji_code": "1f419",
        "reaction_type": "unicode_emoji",
    }
    verify_action(
        db,
        realm.realm_id,
        reacting(
            realm, "guest", message_id, ReactionRequest("thumbs_up", "1f44d", "unicode_emoji")
        ),
    )
    with db.snapshot() as session:
        message = get_message(session, realm.users["member"], message_id)["message"]
    assert message["reactions"] == [
        {
            "emoji_name": "octopus",
            "emoji_code": "1f419",
            "reaction_type": "unicode_emoji",
            "user_id": realm.users["loner"],
        },
        {
            "emoji_name": "thumbs_up",
            "emoji_code": "1f44d",
            "reaction_type": "unicode_emoji",
            "user_id": realm.users["guest"],
        },
    ]
    # Removed by name, or by code alone.
    verified = verify_action(
        db,
        realm.realm_id,
        reacting(realm, "loner", message_id, ReactionRequest("octopus"), add=False),
    )
    assert verified.events[0].event["op"] == "remove"
    verify_action(
        db,
        realm.realm_id,
        reacting(realm, "guest", message_id, ReactionRequest(None, "1f44d"), add=False),
    )
    with db.snapshot() as session:
        assert get_message(session, realm.users["guest"], message_id)["message"]["reactions"] == []


def test_reactions_are_refused_as_zulip_refuses_them(db: Database, realm: SampleRealm) -> None:
    public = send(db, realm, ChannelTarget(realm.streams["public"]))
    private = send(db, realm, ChannelTarget(realm.streams["private"]))
    direct = send(db, realm, DirectTarget(user_ids=(realm.users["guest"],)))
    with db.write() as session:
        check_add_reaction(
            session, realm.realm_id, realm.users["guest"], public, ReactionRequest("tada")
        )
    again = refused(db, realm, reacting(realm, "guest", public, ReactionRequest("tada")))
    assert isinstance(again, ReactionAlreadyExists)
    assert (again.code, str(again)) == ("REACTION_ALREADY_EXISTS", "Reaction already exists.")
    missing = refused(
        db, realm, reacting(realm, "member", public, ReactionRequest("tada"), add=False)
    )
    assert isinstance(missing, ReactionDoesNotExist)
    assert (missing.code, str(missing)) == ("REACTION_DOES_NOT_EXIST", "Reaction doesn't exist.")
    # Messages the reactor may not read are refused like messages that do not exist.
    for user, message_id in [("loner", private), ("owner", direct), ("outsider_guest", public)]:
        error = refused(db, realm, reacting(realm, user, message_id, ReactionRequest("tada")))
        assert str(error) == "Invalid message(s)"
    assert str(refused(db, realm, reacting(realm, "guest", public, ReactionRequest("nope")))) == (
        "Emoji 'nope' does not exist"
    )
    error = refused(
        db, realm, reacting(realm, "guest", public, ReactionRequest("x", "1", "realm_emoji"))
    )
    assert str(error) == "Invalid custom emoji."
