"""Messages as clients see them: each module owns one part.

* `recipients`: Zulip's recipient types and the key of a direct-message conversation;
* `rendering`: the HTML a message's Markdown renders to, and its bounds;
* `wire`: the message object (`MessageView`), its wire shape and its `message` event;
* `flags`: a message's per-user flags and their Zulip names;
* `narrows`: the narrow, parsed, bounded, stored, and as a queue's event filter;
* `history`: `GET /messages`, its anchors, its narrow's SQL and its byte bound.

Dependencies run one way: `history` reads through `narrows`, `wire`, `flags` and
`recipients`; nothing here imports `history`, and the others import none of each other.
This package module imports nothing, so importing one part loads only what it needs.
"""
