"""Operations: configuration, logs, the serving process, the `eventq` command, the local
cluster and its nginx configuration, the probe and the demo realm. May import every
other part of the server; nothing imports it but itself (and tests)."""
