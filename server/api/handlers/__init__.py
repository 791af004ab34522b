"""The request handlers, one module per part of the API; each parses, makes one call to
the engine, `models` or `actions`, and answers."""
