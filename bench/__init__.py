"""Benchmarks (`make bench`): they print figures, each beside a baseline from the same run.

Nothing here asserts a target; the figures go into README.md. Every benchmark runs the
real server as a separate process on loopback, on PostgreSQL (a fresh schema of
`EVENTQ_BENCH_POSTGRES_URL`, default the local `test` database) and on SQLite.
"""
