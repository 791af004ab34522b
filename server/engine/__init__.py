"""The event engine: `EventService` and the parts it composes. Speaks no HTTP: imports
`models`, `actions`, `queues` and its own modules, never `server.api` or `server.ops`."""
