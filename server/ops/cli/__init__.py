"""The `eventq` command line (`server.ops.cli.main:main`)."""
