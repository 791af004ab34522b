"""`eventq send`: send a message as a user, to a channel and topic or directly.

The message goes through the same action as an API request (actions.messages), so its
recipients' queues get it as a message event.
"""

from __future__ import annotations

import argparse

from actions.errors import InvalidInput
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from models.database import Database
from models.outbox import lock_realm
from server.ops.cli.shared import Commands, emit, find_realm, find_user

# The `client` of messages sent from the command line.
CLI_CLIENT_NAME = "eventq"


def cmd_send(args: argparse.Namespace, db: Database) -> None:
    target: ChannelTarget | DirectTarget
    recipients: list[str] = []
    if args.channel is not None:
        if args.topic is None:
            raise InvalidInput("--channel needs --topic.")
        target = ChannelTarget(args.channel)
    else:
        recipients = [e.strip() for value in args.to for e in value.split(",") if e.strip()]
        target = DirectTarget(emails=tuple(recipients))
    with db.write() as session:
        # The subdomain must be read to know which realm to lock; the sender is read
        # under the realm lock's shared mode, as the action reads them again.
        realm = find_realm(session, args.realm)
        lock_realm(session, realm.id, shared=True)
        sender = find_user(session, realm, args.email)
        message_id = check_send_message(
            session, realm.id, sender.id, target, args.topic, args.text, CLI_CLIENT_NAME
        )
    where = f"#{args.channel} > {args.topic}" if args.channel is not None else ", ".join(recipients)
    emit(args, {"id": message_id}, f"Sent message {message_id} to {where}.")


def add_commands(commands: Commands) -> None:
    """Add `send`."""
    p = commands.on_database(
        "send",
        cmd_send,
        "Send a message as a user, to a channel and topic or to users directly; its "
        "recipients get it as a message event. Prints the new message's id.",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email", help="the sender's email")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--channel", metavar="NAME", help="the channel to send to")
    # Repeated, or with commas (`--to a@x,b@x`): a list option would swallow the text.
    where.add_argument(
        "--to",
        action="append",
        metavar="EMAIL",
        help="a user to send a direct message to (repeat, or separate emails with commas)",
    )
    p.add_argument("--topic", metavar="T", help="the topic (with --channel)")
    p.add_argument("text", help="the message (Markdown)")
