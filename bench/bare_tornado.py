"""The baseline: a bare Tornado process that parks requests and answers them when an
event arrives, with no queues, no database, no authentication and no routing.

`python -m bench.bare_tornado` prints its port. Two protocols:

* one-shot: `GET /park` waits, `POST /release` answers every parked request (and every
  later one at once), with the release's `body` parameter if it has one (the deactivation
  benchmark hands over a real answer of eventq's, so that both send the same bytes);
* a long-poll loop driven like eventq's: `GET /poll?last_event_id=N` answers at once
  with the newest event if its id is above N, else waits for the next one; `POST /event`
  makes a new event (id one higher) and answers every waiting poll with it. The answer
  has the shape and about the size of an eventq answer carrying one `stream` `create`
  event, so that a client parses the same JSON from both.

`GET /parked` says how many requests are waiting (either protocol).
"""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass, field

import tornado.httpserver
import tornado.web

# The one-shot answer when the release names none: a grouped peer_remove and a
# realm_user update (a short one: a real answer lists every channel the user sees).
BODY = (
    b'{"result":"success","msg":"","events":[{"type":"subscription","op":"peer_remove",'
    b'"stream_ids":[1001,1002],"user_ids":[5001],"id":0},{"type":"realm_user","op":'
    b'"update","person":{"user_id":5001,"is_active":false},"id":1}],"queue_id":'
    b'"0123456789abcdef0123456789abcdef"}'
)
# The answer of the long-poll loop: eventq's answer to a `stream` `create`, id spliced in.
EVENT_ANSWER = (
    b'{"result":"success","msg":"","events":[{"type":"stream","op":"create","streams":'
    b'[{"stream_id":1001,"name":"bench 1","description":"","rendered_description":"",'
    b'"invite_only":false,"is_web_public":false,"history_public_to_subscribers":true,'
    b'"date_created":1764000000,"stream_post_policy":1,"is_announcement_only":false,'
    b'"message_retention_days":null,"first_message_id":null,"can_remove_subscribers_group":'
    b'null,"stream_weekly_traffic":null}],"id":%d}],"queue_id":"0123456789abcdef01234567890'
    b'abcde"}'
)


@dataclass
class State:
    released: asyncio.Event = field(default_factory=asyncio.Event)
    body: bytes = BODY
    event_id: int = -1
    next_event: asyncio.Future[int] | None = None
    parked: int = 0

    def future(self) -> asyncio.Future[int]:
        if self.next_event is None:
            self.next_event = asyncio.get_running_loop().create_future()
        return self.next_event


class Park(tornado.web.RequestHandler):
    async def get(self) -> None:
        state: State = self.application.settings["state"]
        state.parked += 1
        try:
            await state.released.wait()
        finally:
            state.parked -= 1
        self.set_header("Content-Type", "application/json")
        self.finish(state.body)


class Release(tornado.web.RequestHandler):
    def post(self) -> None:
        state: State = self.application.settings["state"]
        body = self.get_body_argument("body", None)
        if body:
            state.body = body.encode()
        state.released.set()
        self.finish(b"{}")


class Poll(tornado.web.RequestHandler):
    async def get(self) -> None:
        state: State = self.application.settings["state"]
        last = int(self.get_query_argument("last_event_id", "-1"))
        if state.event_id <= last:
            state.parked += 1
            try:
                await state.future()
            finally:
                state.parked -= 1
        if self.request.connection is None:
            return
        self.set_header("Content-Type", "application/json")
        self.finish(EVENT_ANSWER % state.event_id)


class Event(tornado.web.RequestHandler):
    def post(self) -> None:
        state: State = self.application.settings["state"]
        state.event_id += 1
        waiting, state.next_event = state.next_event, None
        if waiting is not None:
            waiting.set_result(state.event_id)
        self.finish(b'{"id":%d}' % state.event_id)


class Parked(tornado.web.RequestHandler):
    def get(self) -> None:
        state: State = self.application.settings["state"]
        self.finish(json.dumps({"parked": state.parked}))


async def main() -> None:
    app = tornado.web.Application(
        [
            (r"/park", Park),
            (r"/release", Release),
            (r"/poll", Poll),
            (r"/event", Event),
            (r"/parked", Parked),
        ],
        state=State(),
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
