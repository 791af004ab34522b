"""eventq's test suite: unit tests beside integration tests that start a real server."""
