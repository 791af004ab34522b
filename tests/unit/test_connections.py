"""`server.api.connections.GuardedHTTPServer` in-process: the TCP_NODELAY it sets once on
every connection stays on across keep-alive requests."""

from __future__ import annotations

import asyncio
import socket

import tornado.netutil
import tornado.web

from server.api.connections import GuardedHTTPServer
from server.engine.abuse import AbuseMonitor

WAIT_SECS = 10.0


class NoDelayHandler(tornado.web.RequestHandler):
    """Answers with the TCP_NODELAY flag of the connection it arrived on."""

    def get(self) -> None:
        stream = self.request.connection.stream  # type: ignore[union-attr]
        flag = stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        self.finish(b"nodelay=%d" % (1 if flag else 0))


async def _answers_on_one_connection(port: int, count: int) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    bodies = []
    try:
        for _ in range(count):
            writer.write(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            bodies.append(await reader.readexactly(length))
    finally:
        writer.close()
    return bodies


async def test_every_answer_goes_out_without_nagle_on_a_keep_alive_connection() -> None:
    server = GuardedHTTPServer(tornado.web.Application([(r"/", NoDelayHandler)]))
    server.limit_connections(100, AbuseMonitor())
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    server.add_sockets(sockets)
    try:
        async with asyncio.timeout(WAIT_SECS):
            bodies = await _answers_on_one_connection(sockets[0].getsockname()[1], 3)
        # Tornado turns the flag off after each answer; the server keeps it on, so the
        # second and third requests find it still set.
        assert bodies == [b"nodelay=1"] * 3
    finally:
        server.stop()
        await server.close_all_connections()
