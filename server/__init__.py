"""The Tornado application, its outbox consumer, configuration and the `eventq` CLI.

`server` is the only layer that does I/O on behalf of users: HTTP handlers parse a
request into plain values, call one function of `queues`, `models` or `actions`, and
map the plain result or typed error to Zulip's JSON envelope.
"""
