"""Shards behind a real nginx (issue 12): routing, queues that move, fencing, `eventq cluster`.

Three `eventq serve --shard shardK` processes share one database behind Debian's nginx,
configured by `server.ops.cluster.nginx.nginx_standalone_config` (tests/helpers/nginx.py). The
tests check, through nginx and at each shard's own port:

- the configuration generator: its validation, and that `nginx -t` accepts its output;
- the unmodified `zulip` client: register, `call_on_each_event`, the admin reads;
- queues of every shard, each polled through nginx on the shard its id names;
- `DELETE /api/v1/events` sent to a shard that does not hold the queue;
- a shard removed from nginx's list: its queues resume on the shard they now hash to,
  with the same ids, nothing lost or duplicated;
- a shard that comes back after its queue moved claims it anew (never answers from its
  stale copy), and a shard that lost a queue cannot write its checkpoint;
- `eventq cluster` from start to stop, with a shard killed and restarted.

Each database test runs on SQLite and PostgreSQL, except the fencing test (PostgreSQL,
where a stopped process holds no lock that others need). Waits are on processes, log
lines, polls and (for states nothing announces, such as nginx's workers) a re-checked
condition, each with a timeout.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actions.users import do_create_user
from migrations import upgrade
from models.database import Database
from models.descriptors import load_descriptor
from models.ownership import shard_of
from models.queries import get_realm
from server.ops.cluster.nginx import (
    ShardAddress,
    nginx_site_config,
    nginx_standalone_config,
    parse_shard,
)
from tests.helpers.api import Answer, ApiClient
from tests.helpers.cli import EVENTQ, run_eventq
from tests.helpers.databases import BACKENDS, database_url_for
from tests.helpers.nginx import NginxServer, child_pids, nginx_binary
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer
from tests.test_zulip_client import ObservedClient, StopListening

SHARD_NAMES = ("shard1", "shard2", "shard3")
# Behind nginx the shards take the client's address from X-Real-IP.
SHARD_ENV = {"EVENTQ_TRUSTED_PROXY": "on"}
# How long an event committed now may take to reach a waiting poll (it takes ms).
EVENT_TIMEOUT = 30.0
# A shard that lost a queue answers a poll parked on its copy with a heartbeat within
# milliseconds of the claim; a real heartbeat takes 45 s at least.
FENCED_ANSWER_TIMEOUT = 15.0
MAX_POLLS = 10
# `eventq cluster`: start (migrate, three shards, nginx), restart a shard, stop.
CLUSTER_START_TIMEOUT = 90.0
CLUSTER_STOP_TIMEOUT = 60.0
LOG_PREFIX_MOVED = "queue {queue_id} moved from {old} to {new}"


# --- the configuration generator ------------------------------------------------------


def test_parse_shard_and_the_checks_of_the_generator() -> None:
    assert parse_shard("shard1=127.0.0.1:9994") == ShardAddress("shard1", "127.0.0.1", 9994)
    assert parse_shard(" s_2=[::1]:80 ") == ShardAddress("s_2", "::1", 80)
    assert parse_shard("s_2=[::1]:80").address == "[::1]:80"
    assert parse_shard("a=shard.internal:9994").host == "shard.internal"
    refused = {
        "shard1": "NAME=HOST:PORT",
        "shard1=127.0.0.1": "HOST:PORT",
        "shard1=:9994": "HOST:PORT",
        "shard1=127.0.0.1:http": "HOST:PORT",
        "Shard1=127.0.0.1:9994": "bad shard name",
        "1shard=127.0.0.1:9994": "bad shard name",
        "a.b=127.0.0.1:9994": "bad shard name",
        "=127.0.0.1:9994": "bad shard name",
        "shard1=127.0.0.1:0": "from 1 to 65535",
        "shard1=127.0.0.1:65536": "from 1 to 65535",
        "shard1=evil;host:9994": "bad host",
        "shard1=a b:9994": "bad host",
    }
    for spec, message in refused.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            parse_shard(spec)

    one, two = ShardAddress("one", "127.0.0.1", 9994), ShardAddress("two", "127.0.0.1", 9995)
    with pytest.raises(ValueError, match="at least one shard"):
        nginx_site_config([], "127.0.0.1", 9993)
    with pytest.raises(ValueError, match="'one' is given twice"):
        nginx_site_config([one, ShardAddress("one", "127.0.0.1", 9996)], "127.0.0.1", 9993)
    with pytest.raises(ValueError, match="one and two are both at 127.0.0.1:9994"):
        nginx_site_config([one, ShardAddress("two", "127.0.0.1", 9994)], "127.0.0.1", 9993)
    with pytest.raises(ValueError, match="from 1 to 65535"):
        nginx_site_config([one, two], "127.0.0.1", 0)
    with pytest.raises(ValueError, match="bad host"):
        nginx_site_config([one, two], "0.0.0.0; include /etc/passwd", 80)
    with pytest.raises(ValueError, match="proxy to itself"):
        nginx_site_config([one, two], "127.0.0.1", 9995)
    with pytest.raises(ValueError, match="from 1 to 65535"):
        ShardAddress("one", "127.0.0.1", 70000)


def test_the_routing_rules_of_the_fragment() -> None:
    shards = [parse_shard(f"shard{k}=127.0.0.1:{9993 + k}") for k in (1, 2, 3)]
    site = nginx_site_config(shards, "0.0.0.0", 80)
    # register and REST: every shard; a poll: its shard, the next one as backup.
    assert re.search(
        r"upstream eventq_all \{\s+server 127.0.0.1:9994 (?P<down>max_fails=1 fail_timeout=1s);"
        r"\s+server 127.0.0.1:9995 (?P=down);\s+server 127.0.0.1:9996 (?P=down);\s+keepalive \d+;",
        site,
    ), site
    for name, own, backup in (
        ("shard1", 9994, 9995),
        ("shard2", 9995, 9996),
        ("shard3", 9996, 9994),
    ):
        assert re.search(
            rf"upstream eventq_shard_{name} \{{\s+server 127.0.0.1:{own} max_fails=1 "
            rf"fail_timeout=1s;\s+server 127.0.0.1:{backup} backup max_fails=1 fail_timeout=1s;"
            rf"\s+keepalive",
            site,
        ), site
        assert f"~^GET:{name}\\.  eventq_shard_{name};" in site
    assert re.search(r"upstream eventq_by_queue \{\s+hash \$arg_queue_id consistent;", site)
    map_block = site[site.index("map ") : site.index("}", site.index("map "))]
    assert map_block.index("~^GET:shard3") < map_block.index("~^GET:  eventq_by_queue")
    assert "default  eventq_all;" in map_block
    assert '"$request_method:$arg_queue_id"' in map_block
    for directive in (
        "listen 0.0.0.0:80;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_read_timeout 120s;",
        "proxy_buffering off;",
        "proxy_pass http://$eventq_events_upstream;",
    ):
        assert directive in site, directive
    # One shard: no backup of itself.
    alone = nginx_site_config(shards[:1], "127.0.0.1", 9993)
    assert "backup" not in alone


@pytest.mark.parametrize(
    "specs",
    [
        ["main=127.0.0.1:9994"],
        ["shard1=127.0.0.1:9994", "shard2=127.0.0.1:9995", "shard3=localhost:9996"],
        ["v6=[::1]:9994", "v4=127.0.0.1:9994"],
    ],
)
def test_nginx_accepts_the_generated_configuration(specs: list[str], tmp_path: Path) -> None:
    binary = nginx_binary()
    shards = [parse_shard(spec) for spec in specs]
    config = tmp_path / "nginx.conf"
    config.write_text(nginx_standalone_config(shards, "127.0.0.1", 9993, tmp_path))
    checked = subprocess.run(
        [binary, "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr
    text = config.read_text()
    assert "daemon off;" in text and "master_process on;" in text
    for name in ("nginx.pid", "nginx-error.log", "nginx-access.log", "proxy_temp"):
        assert f'"{tmp_path / name}' in text, name


def test_nginx_config_command(tmp_path: Path) -> None:
    # No database is opened: the URL names a folder that does not exist.
    url = f"sqlite:///{tmp_path}/absent/eventq.sqlite3"
    specs = ["shard1=127.0.0.1:9994", "shard2=127.0.0.1:9995"]
    shards = [parse_shard(spec) for spec in specs]
    args = [arg for spec in specs for arg in ("--shard", spec)]
    printed = run_eventq(url, "nginx-config", *args, "--listen", "127.0.0.1:8080")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == nginx_site_config(shards, "127.0.0.1", 8080)
    default = run_eventq(url, "nginx-config", *args)
    assert default.stdout == nginx_site_config(shards, "0.0.0.0", 80)
    whole = run_eventq(url, "nginx-config", *args, "--standalone", str(tmp_path))
    assert whole.stdout == nginx_standalone_config(shards, "0.0.0.0", 80, tmp_path)
    assert not (tmp_path / "absent").exists()
    bad = run_eventq(url, "nginx-config", "--shard", "shard1=127.0.0.1:9994", "--shard", "x")
    assert bad.returncode == 1
    assert bad.stderr.startswith("eventq: error: a shard is NAME=HOST:PORT"), bad.stderr
    twice = run_eventq(url, "nginx-config", *args, "--shard", "shard1=127.0.0.1:9996")
    assert twice.returncode == 1
    assert "shard name 'shard1' is given twice" in twice.stderr
    helped = run_eventq(url, "nginx-config", "--help")
    assert "--standalone VAR_DIR" in helped.stdout and "NAME=HOST:PORT" in helped.stdout


# --- three shards behind nginx ----------------------------------------------------------


@dataclass
class Cluster:
    """Three shard processes on one database and an nginx in front of them."""

    database_url: str
    db: Database
    realm: SampleRealm
    shards: dict[str, LiveServer]
    nginx: NginxServer

    def addresses(self, names: Sequence[str] = SHARD_NAMES) -> list[ShardAddress]:
        return [ShardAddress(name, "127.0.0.1", self.shards[name].port) for name in names]

    def api(self, user: str, via: str | None = None) -> ApiClient:
        """`user`'s client through nginx, or (`via`) at one shard's own port."""
        base = self.nginx.url if via is None else self.shards[via].url
        return ApiClient(base, self.realm.emails[user], self.realm.api_keys[user])

    def shard_at(self, upstream: str) -> str:
        """The shard whose address nginx logged as the upstream that answered."""
        last = upstream.split(",")[-1].strip()  # "a, b" when nginx tried a, then b
        (name,) = [n for n, s in self.shards.items() if last == f"127.0.0.1:{s.port}"]
        return name

    def holder(self, queue_id: str) -> tuple[str | None, int, int]:
        """(owner_shard, owner_epoch, checkpoint_event_id) of the queue's descriptor."""
        with self.db.snapshot() as session:
            record = load_descriptor(session, queue_id)
        assert record is not None, f"no descriptor of {queue_id}"
        return record.owner_shard, record.owner_epoch, record.checkpoint_event_id

    def create_users(self, *emails: str) -> None:
        """One realm_user add event per user, to every active user; one commit each."""
        for email in emails:
            with self.db.write() as session:
                do_create_user(session, self.realm.realm_id, email)


@contextmanager
def running_cluster(
    database_url: str, db: Database, realm: SampleRealm, directory: Path
) -> Iterator[Cluster]:
    """Start the three shards at once, then nginx; stop everything afterwards, and
    check that every shard still running then stops cleanly."""
    nginx_binary()  # skip or fail before starting anything
    shards = {
        name: LiveServer(database_url, SHARD_ENV, extra_args=("--shard", name))
        for name in SHARD_NAMES
    }
    with ExitStack() as stack:
        running: list[LiveServer] = []

        def stop_shards() -> None:
            statuses = {}
            for shard in running:
                if shard.process is not None and shard.process.poll() is None:
                    statuses[shard] = shard.stop()
            for shard, status in statuses.items():
                assert status == 0, "\n".join(shard.lines[-30:])

        stack.callback(stop_shards)

        def start(shard: LiveServer) -> None:
            running.append(shard)
            shard.start()

        with ThreadPoolExecutor(len(shards)) as pool:
            list(pool.map(start, shards.values()))
        addresses = [ShardAddress(n, "127.0.0.1", s.port) for n, s in shards.items()]
        nginx = NginxServer(directory / "nginx", addresses)
        stack.callback(lambda: nginx.process is not None and nginx.stop())
        nginx.start()
        yield Cluster(database_url, db, realm, shards, nginx)


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One cluster per backend for the tests that leave it as they found it."""
    nginx_binary()
    directory = tmp_path_factory.mktemp("shared-cluster")
    with database_url_for(str(request.param), str(directory)) as url:
        upgrade(url)
        db = Database(url)
        try:
            realm = make_sample_realm(db)
            with running_cluster(url, db, realm, directory) as cluster:
                yield cluster
        finally:
            db.dispose()


@pytest.fixture
def cluster(
    database_url: str, db: Database, realm: SampleRealm, tmp_path: Path
) -> Iterator[Cluster]:
    """A cluster of the test's own, for the tests that remove or stop shards."""
    with running_cluster(database_url, db, realm, tmp_path) as running:
        yield running


class PollCounter(ApiClient):
    """An `ApiClient` that counts its polls of each queue (nginx logs one line each)."""

    def __init__(self, base_url: str, email: str, api_key: str) -> None:
        super().__init__(base_url, email, api_key)
        self.polls: Counter[str] = Counter()

    def poll(self, queue_id: str, last_event_id: int, dont_block: bool = False) -> Answer:
        self.polls[queue_id] += 1
        return super().poll(queue_id, last_event_id, dont_block)


def poll_events(
    api: ApiClient, queue_id: str, last_event_id: int, count: int
) -> list[dict[str, Any]]:
    """Long-poll until `count` events (heartbeats aside) arrived; every one, in order,
    with strictly increasing ids."""
    received: list[dict[str, Any]] = []
    for _ in range(MAX_POLLS):
        answer = api.poll(queue_id, last_event_id)
        assert answer.ok, (queue_id, answer.status, answer.body)
        for event in answer.body["events"]:
            if event["type"] == "heartbeat":
                continue
            assert event["id"] > last_event_id, (queue_id, event, last_event_id)
            last_event_id = event["id"]
            received.append(event)
        if len(received) >= count:
            assert len(received) == count, (queue_id, received)
            return received
    raise AssertionError(f"{queue_id}: {len(received)} of {count} events: {received}")


def added_emails(events: list[dict[str, Any]]) -> list[str]:
    for event in events:
        assert (event["type"], event["op"]) == ("realm_user", "add"), event
    return [event["person"]["email"] for event in events]


def assert_no_more(api: ApiClient, queue_id: str, last_event_id: int) -> None:
    """Everything up to `last_event_id` is acknowledged and nothing else is queued."""
    answer = api.poll(queue_id, last_event_id, dont_block=True)
    assert answer.ok and answer.body["events"] == [], (queue_id, answer.body)


def is_waiting(admin: ApiClient, queue_id: str) -> bool:
    """Whether a poll of `queue_id` is parked on the shard `admin` talks to."""
    listed = admin.ok("GET", "/eventq/queues")["queues"]
    return any(q["queue_id"] == queue_id and q["waiting"] for q in listed)


def assert_gone(answer_status: int, body: dict[str, Any], where: str) -> None:
    assert (answer_status, body.get("code")) == (400, "BAD_EVENT_QUEUE_ID"), (where, body)


def test_zulip_client_through_nginx(shared: Cluster) -> None:
    realm = shared.realm
    client = ObservedClient(
        email=realm.emails["member"],
        api_key=realm.api_keys["member"],
        site=shared.nginx.url,
        config_file=os.devnull,
    )
    members = client.get_members()
    assert members["result"] == "success", members
    assert set(realm.users.values()) <= {u["user_id"] for u in members["members"]}
    subscriptions = client.get_subscriptions()
    assert subscriptions["result"] == "success", subscriptions
    assert {s["name"] for s in subscriptions["subscriptions"]} == {
        "public",
        "private",
        "web-public",
    }

    received: queue.Queue[dict[str, Any]] = queue.Queue()
    outcome: list[BaseException] = []
    email = "listener-through-nginx@zulip.example.com"

    def callback(event: dict[str, Any]) -> None:
        received.put(event)
        if event["type"] == "realm_user" and event["person"]["email"] == email:
            raise StopListening

    def listen() -> None:
        try:
            client.call_on_each_event(callback, event_types=["realm_user"])
        except BaseException as error:  # recorded, so the test (not pytest's hook) judges it
            outcome.append(error)

    listener = threading.Thread(target=listen, name="zulip-listener", daemon=True)
    listener.start()
    queue_id = client.registered.get(timeout=EVENT_TIMEOUT)
    assert shard_of(queue_id) in SHARD_NAMES, queue_id
    shared.create_users(email)
    event = received.get(timeout=EVENT_TIMEOUT)
    assert (event["type"], event["op"], event["person"]["email"]) == ("realm_user", "add", email)
    listener.join(timeout=EVENT_TIMEOUT)
    assert not listener.is_alive(), "call_on_each_event did not return"
    assert len(outcome) == 1 and isinstance(outcome[0], StopListening), outcome
    # The client's polls went through nginx, to the shard its queue id names.
    (upstream,) = shared.nginx.answered_by(queue_id)
    assert shared.shard_at(upstream) == shard_of(queue_id)


def test_polls_reach_the_queues_of_every_shard(shared: Cluster) -> None:
    through_nginx = shared.api("owner")
    queues: dict[str, list[str]] = {}
    # register goes to any shard: register through nginx until every shard made one.
    for _ in range(10 * len(SHARD_NAMES)):
        queue_id = through_nginx.register(event_types=["realm_user"])["queue_id"]
        queues.setdefault(str(shard_of(queue_id)), []).append(queue_id)
        if set(queues) == set(SHARD_NAMES):
            break
    assert set(queues) == set(SHARD_NAMES), queues
    # And one more at each shard's own port.
    for name in SHARD_NAMES:
        queue_id = shared.api("owner", via=name).register(event_types=["realm_user"])["queue_id"]
        assert queue_id.startswith(f"{name}."), queue_id
        queues[name].append(queue_id)
    every = [(name, queue_id) for name, ids in queues.items() for queue_id in ids]
    before = {queue_id: shared.holder(queue_id) for _, queue_id in every}

    email = "every-shard@zulip.example.com"
    shared.create_users(email)
    for name, queue_id in every:
        events = poll_events(through_nginx, queue_id, -1, 1)
        assert added_emails(events) == [email] and events[0]["id"] == 0, events
        (upstream,) = shared.nginx.answered_by(queue_id)
        assert shared.shard_at(upstream) == name, (queue_id, upstream)
        # Served where it was made: no claim, no move.
        assert shared.holder(queue_id)[:2] == before[queue_id][:2] == (name, before[queue_id][1])
        assert_no_more(through_nginx, queue_id, 0)


def test_delete_reaches_the_queue_at_any_shard(shared: Cluster) -> None:
    member = {name: shared.api("member", via=name) for name in SHARD_NAMES}
    through_nginx = shared.api("member")
    deletions = []
    for holder in SHARD_NAMES:
        for deleter in SHARD_NAMES:
            if deleter == holder:
                continue
            queue_id = member[holder].register(event_types=["realm_user"])["queue_id"]
            # The holder has it in memory, as a queue being polled would be.
            assert_no_more(member[holder], queue_id, -1)
            deletions.append((queue_id, holder, deleter))
    for queue_id, holder, deleter in deletions:
        answer = member[deleter].call("DELETE", "/events", {"queue_id": queue_id})
        assert answer.ok, (queue_id, holder, deleter, answer.status, answer.body)
    for queue_id, holder, deleter in deletions:
        for name in (holder, *(n for n in SHARD_NAMES if n != holder)):
            answer = member[name].poll(queue_id, -1, dont_block=True)
            assert_gone(answer.status, answer.body, f"{queue_id} at {name} (deleted at {deleter})")
        answer = through_nginx.poll(queue_id, -1, dont_block=True)
        assert_gone(answer.status, answer.body, f"{queue_id} through nginx")
        again = member[holder].call("DELETE", "/events", {"queue_id": queue_id})
        assert_gone(again.status, again.body, f"{queue_id} deleted twice")
        with shared.db.snapshot() as session:
            assert load_descriptor(session, queue_id) is None, queue_id


def test_a_removed_shards_queues_resume_where_they_hash(cluster: Cluster) -> None:
    realm = cluster.realm
    through_nginx = PollCounter(cluster.nginx.url, realm.emails["owner"], realm.api_keys["owner"])
    removed = "shard2"
    direct = cluster.api("owner", via=removed)
    # Several of the removed shard's queues: the hash spreads them over the others.
    moving = [direct.register(event_types=["realm_user"])["queue_id"] for _ in range(6)]
    staying = [
        cluster.api("owner", via=name).register(event_types=["realm_user"])["queue_id"]
        for name in SHARD_NAMES
        if name != removed
    ]

    def answered_by(queue_id: str, polls: slice) -> list[str]:
        """The shards that answered this range of the queue's polls through nginx."""
        upstreams = cluster.nginx.answered_by(queue_id, through_nginx.polls[queue_id])
        return [cluster.shard_at(upstream) for upstream in upstreams[polls]]

    first = ["first-1@zulip.example.com", "first-2@zulip.example.com"]
    cluster.create_users(*first)
    for queue_id in moving + staying:
        events = poll_events(through_nginx, queue_id, -1, 2)
        assert added_emails(events) == first and [e["id"] for e in events] == [0, 1]
        assert_no_more(through_nginx, queue_id, 1)
    polls_before = dict(through_nginx.polls)
    for queue_id in moving + staying:
        assert set(answered_by(queue_id, slice(None))) == {shard_of(queue_id)}

    # Committed before the removal, polled after it: nothing may be lost on the way.
    before = ["before-removal@zulip.example.com"]
    cluster.create_users(*before)
    kept = [name for name in SHARD_NAMES if name != removed]
    cluster.nginx.reload(cluster.addresses(kept))
    after = ["after-removal-1@zulip.example.com", "after-removal-2@zulip.example.com"]
    cluster.create_users(*after)
    for queue_id in moving + staying:
        events = poll_events(through_nginx, queue_id, 1, 3)
        assert added_emails(events) == before + after, (queue_id, events)
        assert [e["id"] for e in events] == [2, 3, 4], (queue_id, events)
        assert_no_more(through_nginx, queue_id, 4)

    # Another round after the move: the ids go on, once each.
    last = ["last@zulip.example.com"]
    cluster.create_users(*last)
    for queue_id in moving + staying:
        events = poll_events(through_nginx, queue_id, 4, 1)
        assert added_emails(events) == last and events[0]["id"] == 5, (queue_id, events)
        assert_no_more(through_nginx, queue_id, 5)

    landed: dict[str, str] = {}
    for queue_id in moving + staying:
        # Every poll since the removal went to one shard: the hash keeps a queue where
        # it landed (no move back and forth).
        since = answered_by(queue_id, slice(polls_before[queue_id], None))
        assert len(set(since)) == 1, (queue_id, since)
        landed[queue_id] = since[0]
    for queue_id in staying:
        assert landed[queue_id] == shard_of(queue_id)
        assert cluster.holder(queue_id)[0] == shard_of(queue_id)
    for queue_id in moving:
        new = landed[queue_id]
        assert new in kept, (queue_id, new)
        owner_shard, epoch, _ = cluster.holder(queue_id)
        assert owner_shard == new and epoch >= 1, (queue_id, owner_shard, epoch)
        cluster.shards[new].wait_for_log(
            re.escape(LOG_PREFIX_MOVED.format(queue_id=queue_id, old=removed, new=new)), 5.0
        )


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_shard_that_lost_a_queue_can_neither_serve_nor_checkpoint_it(
    cluster: Cluster,
) -> None:
    removed = "shard2"
    old = cluster.api("owner", via=removed)
    through_nginx = cluster.api("owner")
    queue_id = old.register(event_types=["realm_user"])["queue_id"]
    cluster.create_users("e0@zulip.example.com")
    assert added_emails(poll_events(old, queue_id, -1, 1)) == ["e0@zulip.example.com"]
    assert cluster.holder(queue_id)[0] == removed

    kept = [name for name in SHARD_NAMES if name != removed]
    cluster.nginx.reload(cluster.addresses(kept))
    parked_check = threading.Event()  # never set: its wait() paces the re-asking
    with ThreadPoolExecutor(2) as pool:
        # A poll parked on the old holder's copy (acknowledging event 0)...
        parked = pool.submit(old.poll, queue_id, 0)
        # The shard announces no parked poll (no log line, no event), so its admin view
        # is asked until it shows one; this is set-up, not what the test measures.
        deadline = time.monotonic() + EVENT_TIMEOUT
        while not is_waiting(old, queue_id):
            assert time.monotonic() < deadline, f"the poll of {queue_id} did not park"
            parked_check.wait(0.02)  # re-asking the admin view, see above
        # ...and the client's next poll, through nginx, to the shard the id hashes to,
        # which claims the queue. The old holder must answer its parked poll at once
        # with a heartbeat and nothing from its copy.
        moved_poll = pool.submit(through_nginx.poll, queue_id, 0)
        stale = parked.result(timeout=FENCED_ANSWER_TIMEOUT)
        assert stale.ok, stale.body
        # A heartbeat carrying the last id acknowledged: the client polls again from
        # there, and nothing is skipped.
        assert stale.body["events"] == [{"type": "heartbeat", "id": 0}], stale.body
        cluster.create_users("e1@zulip.example.com")
        answer = moved_poll.result(timeout=EVENT_TIMEOUT)
    assert answer.ok, answer.body
    assert added_emails(answer.body["events"]) == ["e1@zulip.example.com"]
    assert [e["id"] for e in answer.body["events"]] == [1]
    (upstream,) = cluster.nginx.answered_by(queue_id)
    new = cluster.shard_at(upstream)
    assert new in kept
    owner_shard, moved_epoch, _ = cluster.holder(queue_id)
    assert owner_shard == new, (owner_shard, new)
    assert_no_more(through_nginx, queue_id, 1)  # the new holder has event 1 acknowledged

    # The new holder is frozen with its copy (acknowledged up to 1) in memory: it
    # cannot learn of what follows.
    frozen = cluster.shards[new]
    assert frozen.process is not None
    frozen.process.send_signal(signal.SIGSTOP)
    try:
        # The removed shard comes back: a poll sent to it directly claims the queue anew
        # (never served from its stale copy, which it dropped), with the next id.
        with ThreadPoolExecutor(1) as pool:
            back = pool.submit(old.poll, queue_id, 1)
            cluster.shards[removed].wait_for_log(
                re.escape(LOG_PREFIX_MOVED.format(queue_id=queue_id, old=new, new=removed)),
                EVENT_TIMEOUT,
            )
            cluster.create_users("e2@zulip.example.com")
            answer = back.result(timeout=EVENT_TIMEOUT)
        assert answer.ok, answer.body
        assert added_emails(answer.body["events"]) == ["e2@zulip.example.com"]
        assert [e["id"] for e in answer.body["events"]] == [2]
        owner_shard, epoch, _ = cluster.holder(queue_id)
        assert (owner_shard, epoch) == (removed, moved_epoch + 1)
        assert_no_more(old, queue_id, 2)
        # The removed shard stops and saves its checkpoint: event 2 acknowledged.
        assert cluster.shards[removed].stop() == 0
        owner_shard, epoch, checkpoint = cluster.holder(queue_id)
        assert (owner_shard, epoch, checkpoint) == (removed, moved_epoch + 1, 2)
        # The frozen shard is told to stop while still frozen: on waking, its shutdown
        # (which saves its queues' checkpoints) races its consumer reading the claim.
        # Whichever comes first, its copy's write (event 1 acknowledged, at the stale
        # epoch) must not land.
        frozen.process.send_signal(signal.SIGTERM)
    finally:
        frozen.process.send_signal(signal.SIGCONT)
    status = frozen.stop(timeout=EVENT_TIMEOUT)  # waits; a second SIGTERM is harmless
    assert status == 0, "\n".join(frozen.lines[-30:])
    assert cluster.holder(queue_id) == (removed, moved_epoch + 1, 2), "\n".join(frozen.lines[-30:])

    # The queue lives on at the last shard: nothing lost, nothing twice.
    (last,) = [name for name in kept if name != new]
    at_last = cluster.api("owner", via=last)
    assert_no_more(at_last, queue_id, 2)
    cluster.create_users("e3@zulip.example.com")
    events = poll_events(at_last, queue_id, 2, 1)
    assert added_emails(events) == ["e3@zulip.example.com"] and events[0]["id"] == 3
    assert cluster.holder(queue_id)[:2] == (last, moved_epoch + 2)


# --- eventq cluster ---------------------------------------------------------------------


# Below Linux's ephemeral range (32768-60999), where outgoing connections take their
# ports, so that a block of consecutive free ports is easy to find.
PORT_BLOCK_RANGE = (20000, 32000)


def free_port_block(count: int) -> int:
    """A port P with P..P+count-1 free now (eventq cluster puts shard K on P+K)."""
    for _ in range(100):
        base = random.randrange(*PORT_BLOCK_RANGE)
        sockets = []
        try:
            for port in range(base, base + count):
                candidate = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(candidate)
                candidate.bind(("127.0.0.1", port))
        except OSError:
            continue
        else:
            return base
        finally:
            for candidate in sockets:
                candidate.close()
    raise AssertionError(f"no {count} consecutive free ports in {PORT_BLOCK_RANGE}")


class ClusterCommand:
    """`eventq cluster` as a process, with its output read as it is written."""

    def __init__(self, database_url: str, directory: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.directory = directory
        self.state_path = directory / "var" / "cluster" / "cluster.json"
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen(
            [EVENTQ, "--database-url", database_url, "cluster", "--shards", "3"]
            + ["--port", str(port), "--demo"],
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.rstrip("\n"))
                self.changed.notify_all()
        with self.changed:
            self.lines.append("<EOF>")
            self.changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float, count: int = 1) -> re.Match[str]:
        """The `count`-th line matching `pattern`; fails if the output ends first."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            matches = [m for m in map(regex.search, self.lines) if m]
            if len(matches) >= count:
                return matches[count - 1]
            assert "<EOF>" not in self.lines, f"eventq cluster ended:\n{self.tail()}"
            return None

        with self.changed:
            match = self.changed.wait_for(found, timeout)
        assert match is not None, f"no {pattern!r} within {timeout}s:\n{self.tail()}"
        return match

    def tail(self, count: int = 60) -> str:
        return "\n".join(self.lines[-count:])

    def state(self) -> dict[str, Any]:
        return dict(json.loads(self.state_path.read_text()))

    def close(self) -> None:
        """Kill the command if it still runs (a failed test), and close its output."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(CLUSTER_STOP_TIMEOUT)
        self.reader.join(CLUSTER_STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()


def process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(240)
def test_eventq_cluster_starts_restarts_a_dead_shard_and_stops(
    backend: str, tmp_path: Path
) -> None:
    nginx_binary()
    with database_url_for(backend, str(tmp_path)) as url:  # empty: the cluster migrates it
        port = free_port_block(4)
        command = ClusterCommand(url, tmp_path, port)
        try:
            run_cluster_scenario(command, url, port)
        finally:
            command.close()


def run_cluster_scenario(command: ClusterCommand, url: str, port: int) -> None:
    command.wait_for_line(
        rf"eventq is serving on http://127\.0\.0\.1:{port}\b", CLUSTER_START_TIMEOUT
    )
    login = command.wait_for_line(r"demo login: +email (\S+) +API key (\S+)", 5.0)
    command.wait_for_line(r"shards: +shard1 127\.0\.0\.1:\d+, shard2", 5.0)
    state = command.state()
    assert [(s["name"], s["port"]) for s in state["shards"]] == [
        (f"shard{k}", port + k) for k in (1, 2, 3)
    ]
    assert state["nginx"]["pid"] and all(s["pid"] for s in state["shards"])
    config = Path(state["config"]).read_text()
    assert f"listen 127.0.0.1:{port};" in config

    db = Database(url)
    try:
        with db.snapshot() as session:
            demo = get_realm(session, "demo")
            assert demo is not None
            demo_id = demo.id
        api = ApiClient(f"http://127.0.0.1:{port}", login.group(1), login.group(2))
        queues: dict[str | None, str] = {}
        for _ in range(30):  # a queue on every shard, registered through nginx
            queue_id = api.register(event_types=["realm_user"])["queue_id"]
            queues.setdefault(shard_of(queue_id), queue_id)
            if len(queues) == 3:
                break
        assert set(queues) == set(SHARD_NAMES), queues

        def commit_and_poll(email: str, last_event_id: int) -> None:
            with db.write() as session:
                do_create_user(session, demo_id, email)
            for queue_id in queues.values():
                events = poll_events(api, queue_id, last_event_id, 1)
                assert added_emails(events) == [email], (queue_id, events)
                assert events[0]["id"] == last_event_id + 1

        commit_and_poll("before-kill@demo.example.com", -1)

        # SIGKILL shard2: the supervisor restarts it, and says so.
        victim = state["shards"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        command.wait_for_line(
            rf"shard2 \(pid {victim['pid']}\) was killed by SIGKILL after [\d.]+s; "
            r"restarting it in 1s",
            EVENT_TIMEOUT,
        )
        command.wait_for_line(
            rf"shard2 +\| .*eventq listening on http://127\.0\.0\.1:{port + 2}\b",
            CLUSTER_START_TIMEOUT,
            count=2,
        )
        restarted = command.state()["shards"][1]
        assert restarted["pid"] not in (None, victim["pid"]) and restarted["restarts"] == 1
        # Its queue and the others go on through nginx.
        commit_and_poll("after-restart@demo.example.com", 0)
    finally:
        db.dispose()

    state = command.state()
    nginx_pid = state["nginx"]["pid"]
    pids = {nginx_pid, *child_pids(nginx_pid), *(s["pid"] for s in state["shards"])}
    assert len(pids) >= 5, pids  # three shards, nginx's master and its worker
    command.process.send_signal(signal.SIGTERM)
    assert command.process.wait(CLUSTER_STOP_TIMEOUT) == 0, command.tail()
    command.wait_for_line("stopped on SIGTERM", 5.0)
    left = [pid for pid in pids if process_exists(pid)]
    assert not left, f"still running: {left}\n{command.tail()}"
    assert not command.state_path.exists()
