"""Clients of eventq: the Python client library and the browser page.

`clients` speaks only HTTP and JSON to the server and imports nothing else of ours, so
it can be copied into any asyncio program. `clients.state` is the local state cache
that applies events; the tests use the same cache to prove that applying the events a
user received to their `register` state gives what a fresh `register` returns.
"""
