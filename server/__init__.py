"""eventq's server: the HTTP API, the event engine behind it, and the operations around them.

* `server.engine`: the event service and its parts (live queues, the outbox consumer,
  wake-ups, maintenance, the database threads, credentials, refusal counting); it speaks
  no HTTP.
* `server.api`: the Tornado application, the request base, parameter decoding, rate
  limits and the other protections, and the handlers; it calls the engine.
* `server.ops`: what runs and watches the process: configuration, logs, the serving
  process, the `eventq` command, the cluster supervisor and nginx generator, the probe,
  the demo realm.

Each imports only the packages after it in `docs/architecture.md` §1's table
(`tests/unit/test_import_rules.py` checks it).
"""
