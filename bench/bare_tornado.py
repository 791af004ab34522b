"""The baseline: a bare Tornado process that parks requests and answers them all at
once, with no queues, no database and no routing. `python -m bench.bare_tornado` prints
its port; `GET /park` waits, `POST /release` answers every parked request."""

from __future__ import annotations

import asyncio
import socket

import tornado.httpserver
import tornado.web

# About the size of a long-poll answer carrying one peer_remove event.
BODY = (
    b'{"result":"success","msg":"","events":[{"type":"subscription","op":"peer_remove",'
    b'"stream_ids":[1,2,3],"user_ids":[42],"id":0}],"queue_id":"0123456789abcdef"}'
)


class Park(tornado.web.RequestHandler):
    async def get(self) -> None:
        await self.application.settings["released"].wait()
        self.set_header("Content-Type", "application/json")
        self.finish(BODY)


class Release(tornado.web.RequestHandler):
    def post(self) -> None:
        self.application.settings["released"].set()
        self.finish(b"{}")


async def main() -> None:
    app = tornado.web.Application(
        [(r"/park", Park), (r"/release", Release)],
        released=asyncio.Event(),
        log_function=lambda h: None,
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4096)
    sock.setblocking(False)
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets([sock])
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
