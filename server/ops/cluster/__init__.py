"""`eventq cluster` and `eventq nginx-config`: shards behind a generated nginx."""
