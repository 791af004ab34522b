"""The HTTP API: the Tornado application, the request base every handler shares, the
protections applied before a handler runs, and the handlers. Imports `server.engine`
and the layers below it, never `server.ops`."""
