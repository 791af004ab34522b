"""`make bench`: run every benchmark and print its figures, each beside a baseline
measured in the same run, then a summary table of every row with its ratio and goal.

The soak is not part of the default run: `python -m bench --only soak --minutes N`.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

from bench import (
    cluster,
    deactivation,
    fanout,
    latency,
    memory,
    messages,
    presence,
    prune,
    register,
    soak,
    steady,
    writes,
)
from bench.support import ratio

DEFAULT_RUN = [
    "steady",
    "fanout",
    "register",
    "deactivation",
    "prune",
    "latency",
    "memory",
    "messages",
    "cluster",
    "writes",
    "presence",
]
CHOICES = [*DEFAULT_RUN, "soak"]


@dataclass
class Row:
    """One line of the summary table."""

    what: str
    eventq: str
    baseline: str
    ratio: str
    goal: str


ROWS: list[Row] = []


def _kb(value: float) -> str:
    return f"{value / 1024:.1f} KB"


def _ms(value: float) -> str:
    return f"{value:.0f} ms" if value >= 10 or math.isnan(value) else f"{value:.1f} ms"


def run_steady(args: argparse.Namespace) -> None:
    print(
        f"== steady state: {steady.QUEUES} queues long-polling in a loop, one event to all "
        f"each time every client has re-polled ({args.rounds} rounds after "
        f"{steady.WARMUP_ROUNDS} warm-up, eventq and bare Tornado alternating every "
        f"{steady.ROUNDS_PER_BLOCK}), PostgreSQL"
    )
    f = steady.run(args.rounds, args.py_spy if args.profile else None)
    e, b = f["eventq"], f["bare"]
    print(
        f"eventq: {e['deliveries_per_sec']:.0f} deliveries/s (a round: last answer "
        f"{e['round_last_ms']:.0f} ms, median {e['round_median_ms']:.0f} ms after the "
        f"commit); bare Tornado: {b['deliveries_per_sec']:.0f} deliveries/s (last "
        f"{b['round_last_ms']:.0f} ms, median {b['round_median_ms']:.0f} ms); "
        f"ratio {ratio(e['deliveries_per_sec'], b['deliveries_per_sec'])}"
    )
    print(
        f"server CPU per poll: eventq {e['server_cpu_ms_per_poll']:.3f} ms, bare "
        f"{b['server_cpu_ms_per_poll']:.3f} ms; client CPU per poll: eventq "
        f"{e['client_cpu_ms_per_poll']:.3f} ms, bare {b['client_cpu_ms_per_poll']:.3f} ms"
    )
    print(
        f"server SQL per poll: {e['statements_per_poll']:.3f} statements, "
        f"{e['transactions_per_poll']:.3f} transactions, {e['checkouts_per_poll']:.3f} "
        f"pool checkouts (consumer reads and checkpoint writes included); "
        f"heartbeats {e['heartbeats']}, server errors/warnings logged {e['server_errors']}"
    )
    if "profile" in e:
        print("py-spy profile of the server (20 s of rounds):")
        print(e["profile"])
    ROWS.append(
        Row(
            f"1. steady state, {steady.QUEUES} queues: deliveries/s",
            f"{e['deliveries_per_sec']:.0f}/s",
            f"bare {b['deliveries_per_sec']:.0f}/s",
            ratio(e["deliveries_per_sec"], b["deliveries_per_sec"]),
            ">= 0.7x",
        )
    )
    ROWS.append(
        Row(
            "   server CPU per poll",
            f"{e['server_cpu_ms_per_poll']:.3f} ms",
            f"bare {b['server_cpu_ms_per_poll']:.3f} ms",
            ratio(e["server_cpu_ms_per_poll"], b["server_cpu_ms_per_poll"]),
            "",
        )
    )
    ROWS.append(
        Row(
            "   SQL statements per poll",
            f"{e['statements_per_poll']:.3f}",
            f"{e['transactions_per_poll']:.3f} transactions",
            "",
            "",
        )
    )


def run_fanout(args: argparse.Namespace) -> None:
    print(
        f"== one event to {fanout.USERS * fanout.QUEUES_PER_USER} parked polls "
        f"({fanout.USERS} users x {fanout.QUEUES_PER_USER} queues), and memory, PostgreSQL"
    )
    f = fanout.run()
    e, b = f["eventq"], f["bare"]
    print(
        f"last answer {e['last_answer_ms']:.0f} ms after the commit (median of "
        f"{len(e['last_answer_each_ms'])} events: "
        f"{', '.join(f'{v:.0f}' for v in e['last_answer_each_ms'])} ms; median answer "
        f"{e['median_answer_ms']:.0f} ms); bare Tornado: {b['last_answer_ms']:.0f} ms "
        f"({', '.join(f'{v:.0f}' for v in b['last_answer_each_ms'])} ms; median answer "
        f"{b['median_answer_ms']:.0f} ms); ratio {ratio(e['last_answer_ms'], b['last_answer_ms'])}"
    )
    print(
        f"memory per parked poll (RSS growth / {e['parked']} polls): eventq "
        f"{_kb(e['rss_per_parked_poll_bytes'])}, bare Tornado "
        f"{_kb(b['rss_per_parked_poll_bytes'])}; ratio "
        f"{ratio(e['rss_per_parked_poll_bytes'], b['rss_per_parked_poll_bytes'])}"
    )
    print(
        f"memory per live idle registered queue (RSS growth / "
        f"{e['queues'] - fanout.WARMUP_QUEUES} queues): "
        f"{_kb(e['rss_per_registered_queue_bytes'])} (goal: at most 2 KB); queues evicted "
        f"before the polls: {e['evicted_before_polls']}"
    )
    print(
        f"set-up: {e['registers_per_sec']:.0f} registers/s ({fanout.REGISTER_CONCURRENCY} "
        f"at a time, no initial state), {e['parked']} polls parked in {e['park_secs']:.1f} s;"
        f" heartbeats {e['heartbeats']}, server errors/warnings logged {e['server_errors']}"
    )
    ROWS.append(
        Row(
            f"2. one event to {e['parked']} parked polls: last answer",
            _ms(e["last_answer_ms"]),
            f"bare {_ms(b['last_answer_ms'])}",
            ratio(e["last_answer_ms"], b["last_answer_ms"]),
            "<= 1.3x",
        )
    )
    ROWS.append(
        Row(
            "3. memory per parked poll (RSS)",
            _kb(e["rss_per_parked_poll_bytes"]),
            f"bare {_kb(b['rss_per_parked_poll_bytes'])}",
            ratio(e["rss_per_parked_poll_bytes"], b["rss_per_parked_poll_bytes"]),
            "<= 1.3x",
        )
    )
    ROWS.append(
        Row(
            "   memory per live idle registered queue (RSS)",
            _kb(e["rss_per_registered_queue_bytes"]),
            "goal 2.0 KB",
            ratio(e["rss_per_registered_queue_bytes"], 2048),
            "<= 2 KB",
        )
    )


def run_register(args: argparse.Namespace) -> None:
    print(
        f"== registers into a {register.USERS}-user realm ({register.CONCURRENCY} clients at a "
        f"time, {register.REGISTERS} registers, full initial state) and a reconnect storm of "
        f"{register.STORM_CLIENTS} clients, PostgreSQL"
    )
    f = register.run()
    s = f["storm"]
    ideal = s["clients"] / f["registers_per_sec"]
    print(
        f"{f['registers_per_sec']:.0f} registers/s (goal: at least 500/s; {f['rate_429']} "
        f"429s retried); baseline: {f['own_user_per_sec']:.0f} GET /users/me per second "
        "from the same clients"
    )
    print(
        f"storm: {s['registered']} of {s['clients']} registered, the last after "
        f"{s['all_registered_secs']:.1f} s (median {s['median_registered_secs']:.1f} s); at "
        f"the rate above it would take {ideal:.1f} s (ratio "
        f"{ratio(s['all_registered_secs'], ideal)}); 5xx answers {s['answers_5xx']} (goal 0), "
        f"429 answers {s['answers_429']} (retried after Retry-After, which was "
        f"{'/'.join(f'{v:g}' for v in s['retry_after_secs']) or '-'} s min/median/max), "
        "connection failures "
        f"{s['connection_failures']}, timeouts {s['timeouts']}; all outcomes {s['outcomes']}"
    )
    ROWS.append(
        Row(
            "4. registers/s, 100-user realm",
            f"{f['registers_per_sec']:.0f}/s",
            f"GET /users/me {f['own_user_per_sec']:.0f}/s",
            ratio(f["registers_per_sec"], f["own_user_per_sec"]),
            ">= 500/s",
        )
    )
    ROWS.append(
        Row(
            f"   storm of {s['clients']}: all registered",
            f"{s['all_registered_secs']:.1f} s",
            f"{ideal:.1f} s at the rate above",
            ratio(s["all_registered_secs"], ideal),
            "",
        )
    )
    ROWS.append(
        Row(
            "   storm: 5xx answers / 429 answers",
            f"{s['answers_5xx']} / {s['answers_429']}",
            "",
            "",
            "5xx = 0",
        )
    )


def run_deactivation(args: argparse.Namespace) -> None:
    print(
        f"== deactivating a user in {args.channels} channels, realm of {args.users} users,"
        f" PostgreSQL, every other user's long-poll parked ({deactivation.TARGETS} users,"
        " one after another)"
    )
    f = deactivation.run(args.users, args.channels)
    print(
        f"action: {f['action_ms']:.0f} ms wall, {f['statements']} SQL statements; wrote "
        f"{f['events']} events ({f['peer_remove_events']} grouped peer_remove) to "
        f"{f['recipients']} recipients in all"
    )
    print(
        f"parked polls: {f['parked_polls']}; all answered {f['all_answered_ms']:.0f} ms "
        f"after commit (median of {f['rounds']} deactivations: "
        f"{', '.join(f'{v:.0f}' for v in f['all_answered_each_ms'])} ms; median answer "
        f"{f['median_answered_ms']:.0f} ms); baseline: a bare "
        f"Tornado process answers as many parked requests with the median answer "
        f"({f['answer_bytes']:,} bytes) in {f['bare_tornado_ms']:.0f} ms "
        f"(median of {', '.join(f'{v:.0f}' for v in f['bare_tornado_each_ms'])} ms; ratio "
        f"{ratio(f['all_answered_ms'], f['bare_tornado_ms'])})"
    )
    print(
        f"set-up: {f['register_per_sec']:.0f} registers/s; server memory per live queue "
        f"{f['rss_per_live_queue_bytes']:.0f} bytes (RSS growth / queues, incl. parked "
        "connections)"
    )
    ROWS.append(
        Row(
            f"5. deactivation ({args.channels} channels, {args.users} users): all answered",
            _ms(f["all_answered_ms"]),
            f"bare {_ms(f['bare_tornado_ms'])}",
            ratio(f["all_answered_ms"], f["bare_tornado_ms"]),
            "<= 1.5x",
        )
    )


def run_prune(args: argparse.Namespace) -> None:
    print(
        f"== pruning {prune.HISTORY_EVENTS * prune.USERS:,} outbox_recipient rows "
        f"(`eventq prune-outbox --older-than 0 --json`) while {prune.USERS} queues are "
        "polled, PostgreSQL"
    )
    f = prune.run()
    p, before, during = f["prune"], f["before"], f["during"]
    if f["prune_error"]:
        print(f"prune-outbox FAILED: {f['prune_error']}")
    print(
        f"history of {f['history_recipients']:,} recipient rows built in "
        f"{f['history_build_secs']:.1f} s; the command removed {p.get('recipients', 0):,} "
        f"recipient rows and {p.get('events', 0):,} events in {p.get('seconds', 0):.1f} s "
        f"({f.get('recipients_per_sec', 0):,.0f} rows/s; {f['prune_wall_secs']:.1f} s wall "
        f"with the process start); {f['recipients_left']:,} rows left"
    )
    for name, w in (("before the prune", before), ("during the prune", during)):
        print(
            f"{name}: {w['polls']} dont_block polls p50 {_ms(w['poll_p50_ms'])} p99 "
            f"{_ms(w['poll_p99_ms'])} (max {_ms(w['poll_max_ms'])}); {w['deliveries']} "
            f"deliveries commit->answer p50 {_ms(w['delivery_p50_ms'])} p99 "
            f"{_ms(w['delivery_p99_ms'])}; the writer's action p99 {_ms(w['action_p99_ms'])}"
        )
    print(
        f"client errors {f['client_errors']} {f['first_client_error']}, 429s "
        f"{f['refused_429']}, server errors/warnings logged {f['server_errors']}"
    )
    ROWS.append(
        Row(
            "6. prune 1,000,000 outbox_recipient rows: rows/s",
            f"{f.get('recipients_per_sec', 0):,.0f}/s",
            "",
            "",
            "",
        )
    )
    ROWS.append(
        Row(
            "   poll p99 during the prune (dont_block)",
            _ms(during["poll_p99_ms"]),
            f"before: {_ms(before['poll_p99_ms'])}",
            ratio(during["poll_p99_ms"], before["poll_p99_ms"]),
            "< 50 ms",
        )
    )
    ROWS.append(
        Row(
            "   delivery p99 during the prune",
            _ms(during["delivery_p99_ms"]),
            f"before: {_ms(before['delivery_p99_ms'])}",
            ratio(during["delivery_p99_ms"], before["delivery_p99_ms"]),
            "",
        )
    )


def run_latency(args: argparse.Namespace) -> None:
    print("== delivery latency: commit in another process -> parked long-poll answered")
    for backend in ("postgresql", "sqlite"):
        figures = latency.run(backend)
        print(
            f"{backend:>10}: median {figures['median_ms']:.1f} ms, "
            f"p95 {figures['p95_ms']:.1f} ms "
            f"(baseline: a plain request round trip, median "
            f"{figures['baseline_round_trip_ms']:.1f} ms)"
        )


def run_memory(args: argparse.Namespace) -> None:
    print(
        f"== memory per registered queue ({memory.QUEUES} queues) and cold rebuild "
        f"({memory.PENDING_EVENTS} pending events)"
    )
    for backend in ("postgresql", "sqlite"):
        m = memory.run(backend)
        print(
            f"{backend:>10}: live queue {m['live_bytes_per_queue']:.0f} B, evicted (idle) "
            f"queue {m['cold_bytes_per_queue']:.0f} B; rebuilding a cold queue "
            f"{m['rebuild_ms']:.1f} ms median (baseline: the same poll of a warm queue "
            f"{m['warm_poll_ms']:.2f} ms)"
        )


def run_messages(args: argparse.Namespace) -> None:
    print(
        f"== a steady stream of messages to a channel whose {messages.SUBSCRIBERS} "
        f"subscribers all long-poll: {messages.CALM_RATE:g}/s, then {messages.RATE:g}/s, "
        f"each {messages.SECONDS:g} s measured after {messages.WARMUP_SECS:g} s, PostgreSQL"
    )
    result = messages.run()
    for rate in messages.RATES:
        f = result[f"{rate:g}"]
        print(
            f"at {rate:g}/s: {f['messages_per_sec']:.1f} messages/s achieved; commit -> "
            f"delivery p50 {_ms(f['latency_p50_ms'])}, p99 {_ms(f['latency_p99_ms'])}, max "
            f"{_ms(f['latency_max_ms'])} over {f['deliveries']:,} deliveries "
            f"({f['deliveries_per_sec']:,.0f}/s; missing {f['missing_deliveries']}); the "
            f"writer's transaction p50 {_ms(f['action_p50_ms'])}, p99 "
            f"{_ms(f['action_p99_ms'])}; server CPU {f['server_cpu_pct']:.0f}%, the clients' "
            f"{f['client_cpu_pct']:.0f}%; {f['polls']:,} polls"
        )
    print(f"server errors/warnings logged {result['server_errors']}")
    calm, goal = result[f"{messages.CALM_RATE:g}"], result[f"{messages.RATE:g}"]
    ROWS.append(
        Row(
            f"8. messages at {messages.RATE:g}/s to {messages.SUBSCRIBERS} long-polls: p99",
            _ms(goal["latency_p99_ms"]),
            f"at {messages.CALM_RATE:g}/s: {_ms(calm['latency_p99_ms'])}",
            ratio(goal["latency_p99_ms"], calm["latency_p99_ms"]),
            "< 100 ms",
        )
    )
    ROWS.append(
        Row(
            "   messages/s achieved, deliveries/s",
            f"{goal['messages_per_sec']:.1f}/s",
            f"{goal['deliveries_per_sec']:,.0f} deliveries/s",
            "",
            f">= {messages.RATE:g}/s",
        )
    )


def run_cluster(args: argparse.Namespace) -> None:
    counts = " and ".join(str(n) for n in cluster.SHARD_COUNTS)
    print(
        f"== one event to {cluster.POLLS} parked polls through nginx, with {counts} shards "
        f"(`eventq serve --shard`), one PostgreSQL database; SQL per event per shard"
    )
    result = cluster.run()
    for count in cluster.SHARD_COUNTS:
        f = result[f"{count}"]
        spread = ", ".join(f"{name} {n}" for name, n in f["queues_per_shard"].items())
        print(
            f"{count} shard{'s' if count > 1 else ''}: last answer {_ms(f['last_answer_ms'])} "
            f"after the commit, {f['answers_per_sec']:,.0f} answers/s (median of "
            f"{len(f['last_answer_each_ms'])} events: "
            f"{', '.join(f'{v:.0f}' for v in f['last_answer_each_ms'])} ms; median answer "
            f"{_ms(f['median_answer_ms'])}); queues {spread}"
        )
        print(
            f"   CPU per answer: shards {f['shards_cpu_ms_per_answer']:.3f} ms, nginx "
            f"{f['nginx_cpu_ms_per_answer']:.3f} ms, load generator "
            f"{f['client_cpu_ms_per_answer']:.3f} ms; machine busy "
            f"{f['machine_busy_pct']:.0f}% of {os.cpu_count()} cores during the fan-out; "
            f"{f['tcp_opens_per_event']:,.0f} TCP connections opened per event (nginx to "
            "the shards)"
        )
        print(
            f"   SQL per event per shard: {f['statements_per_event_per_shard']:.1f} "
            f"statements in {f['transactions_per_event_per_shard']:.1f} transactions, "
            f"{f['executions_per_event_per_shard']:,.0f} executions; of them the "
            f"checkpoints of the shard's acknowledging queues "
            f"{f['checkpoint_statements_per_event_per_shard']:.1f} statements, "
            f"{f['checkpoint_rows_per_event_per_shard']:,.0f} rows; other statements "
            f"{f['other_statements_per_event_per_shard']:.1f}; besides: "
            f"{f['credential_reads_per_event_per_shard']:,.0f} reads of expired cached "
            f"credentials, and when idle {f['idle_statements_per_sec_per_shard']:.1f} "
            "statements/s per shard"
        )
        print(
            f"   set-up: {f['registers_per_sec']:.0f} registers/s through nginx, "
            f"{f['parked']} polls parked in {f['park_secs']:.1f} s; nginx changes: "
            f"{f['nginx_changes']}; heartbeats {f['heartbeats']}, reconnects "
            f"{f['reconnects']}, queue moves {f['moves']}, nginx errors {f['nginx_errors']}, "
            f"shard errors/warnings logged {f['server_errors']}"
        )
    one, two = result["1"], result["2"]
    ROWS.append(
        Row(
            f"9. {cluster.POLLS} parked polls via nginx, 2 shards: answers/s",
            f"{two['answers_per_sec']:,.0f}/s",
            f"1 shard {one['answers_per_sec']:,.0f}/s",
            ratio(two["answers_per_sec"], one["answers_per_sec"]),
            "",
        )
    )
    ROWS.append(
        Row(
            "   last answer after the commit, 2 shards",
            _ms(two["last_answer_ms"]),
            f"1 shard {_ms(one['last_answer_ms'])}",
            ratio(two["last_answer_ms"], one["last_answer_ms"]),
            "",
        )
    )
    ROWS.append(
        Row(
            "   SQL statements per event per shard, 2 shards",
            f"{two['statements_per_event_per_shard']:.1f}",
            f"1 shard {one['statements_per_event_per_shard']:.1f}",
            "",
            "",
        )
    )
    ROWS.append(
        Row(
            "   executions per event per shard, 2 shards",
            f"{two['executions_per_event_per_shard']:,.0f}",
            f"1 shard {one['executions_per_event_per_shard']:,.0f}",
            "",
            "",
        )
    )


def run_soak(args: argparse.Namespace) -> None:
    print(
        f"== soak: {soak.USERS * soak.QUEUES_PER_USER} queues long-polling for "
        f"{args.minutes:g} minutes; a realm-wide action every {soak.FANOUT_INTERVAL_SECS:g} s "
        f"and an administrators-only one every {soak.SMALL_INTERVAL_SECS:g} s, PostgreSQL "
        f"(outbox minimum age {soak.OUTBOX_MIN_AGE_SECS} s)"
    )
    f = soak.run(args.minutes)
    print(
        f"RSS after the {f['warmup_secs']:.0f} s warm-up {f['rss_after_warmup_mb']:.1f} MB, at "
        f"the end {f['rss_end_mb']:.1f} MB: growth {f['rss_growth_pct']:+.1f}% (goal: under "
        f"5%); {f['actions']} actions, {f['delivered']} of {f['expected_deliveries']} "
        f"deliveries; heartbeats {f['heartbeats']}, 429s {f['refused_429']}, reconnects "
        f"{f['reconnects']}, client errors {f['client_errors']}, server errors/warnings "
        f"logged {f['server_errors']}"
    )
    print(
        "minute  server CPU  RSS MB  outbox events  recipients  actions  deliveries  "
        "realm-wide p50 / p99  admins-only p99  load avg"
    )
    for m in f["per_minute"]:
        print(
            f"{m['minute']:>6.1f}  {m['server_cpu_pct']:>9.0f}%  {m['rss_mb']:>6.1f}  "
            f"{m['outbox_events']:>13}  {m['outbox_recipients']:>10}  {m['actions']:>7}  "
            f"{m['deliveries']:>10}  {_ms(m['fanout_p50_ms']):>9} / {_ms(m['fanout_p99_ms']):>8}"
            f"  {_ms(m['small_p99_ms']):>15}  {m['load_average']:>8.1f}"
        )
    for event in f["slowest_events"][:3]:
        print(
            f"slow: the {'administrators-only' if event['private'] else 'realm-wide'} action "
            f"at {event['at_secs']:.0f} s reached its {event['answers']} queues "
            f"{event['first_ms']}-{event['last_ms']} ms after its commit"
        )
    ROWS.append(
        Row(
            f"7. soak {args.minutes:g} min: RSS growth after warm-up",
            f"{f['rss_growth_pct']:+.1f}%",
            f"{f['rss_after_warmup_mb']:.0f} MB after warm-up",
            "",
            "< 5%",
        )
    )
    p99s = [m["fanout_p99_ms"] for m in f["per_minute"] if not math.isnan(m["fanout_p99_ms"])]
    if p99s:
        ROWS.append(
            Row(
                "   realm-wide delivery p99, last minute",
                _ms(p99s[-1]),
                f"first minute {_ms(p99s[0])}",
                ratio(p99s[-1], p99s[0]),
                "flat",
            )
        )


def _cores_shared(what: str) -> str:
    """The line that says what shares the machine's cores during a benchmark."""
    return (
        f"   the {os.cpu_count()} cores are shared by {what}, and whatever else runs on the "
        f"machine (load average {os.getloadavg()[0]:.1f} now); 'machine busy' below is "
        "every core's busy time, as a share of one core"
    )


def run_writes(args: argparse.Namespace) -> None:
    seconds = args.seconds or writes.SECONDS
    print(
        f"== the write path: {writes.SENDERS} concurrent senders in a closed loop, (a) each to "
        f"its own channel of {writes.CHANNEL_SUBSCRIBERS} subscribers, (b) all to one channel "
        f"of {writes.USERS}; PostgreSQL; baseline: {writes.SENDERS} psycopg processes writing "
        "the same rows (message, user_message per recipient, outbox_event, outbox_recipient "
        "per recipient), no lock between them, one transaction per message; eventq: "
        "`eventq serve` (EVENTQ_RATE_LIMITING=off), POST /api/v1/messages on keep-alive "
        f"connections from one asyncio process; {writes.WARMUP_SECS:g} s warm-up, then "
        f"{seconds:g} s measured, each"
    )
    print(
        _cores_shared(
            "PostgreSQL, the eventq server (idle during the baseline) or the baseline's "
            f"{writes.SENDERS} processes, and the load generator (this process)"
        )
    )
    f = writes.run(seconds)
    for scenario in writes.SCENARIOS:
        b, e = f[scenario.key]["baseline"], f[scenario.key]["eventq"]
        print(
            f"({scenario.key}) {scenario.title}: eventq {e['messages_per_sec']:.1f} messages/s, "
            f"send p50 {_ms(e['latency_p50_ms'])} p99 {_ms(e['latency_p99_ms'])}, server CPU "
            f"{e['server_cpu_pct']:.0f}%, load generator {e['client_cpu_pct']:.0f}%, machine "
            f"busy {e['machine_busy_pct']:.0f}%; baseline {b['messages_per_sec']:.1f} "
            f"messages/s, transaction p50 {_ms(b['latency_p50_ms'])} p99 "
            f"{_ms(b['latency_p99_ms'])}, its processes {b['client_cpu_pct']:.0f}%, machine "
            f"busy {b['machine_busy_pct']:.0f}%; ratio "
            f"{ratio(e['messages_per_sec'], b['messages_per_sec'])}"
        )
    s = f["sqlite"]
    print(
        f"SQLite, (a): eventq {s['messages_per_sec']:.1f} messages/s, send p50 "
        f"{_ms(s['latency_p50_ms'])} p99 {_ms(s['latency_p99_ms'])}, server CPU "
        f"{s['server_cpu_pct']:.0f}%, machine busy {s['machine_busy_pct']:.0f}% (a ceiling: "
        "SQLite takes one writer at a time; no baseline)"
    )
    print(
        f"server errors/warnings logged: PostgreSQL {f['server_errors']}, SQLite "
        f"{f['sqlite_server_errors']}"
    )
    a, b = f["a"], f["b"]
    ROWS.append(
        Row(
            "10. writes (a) 8 senders, own channels of 100: messages/s",
            f"{a['eventq']['messages_per_sec']:.0f}/s",
            f"psycopg {a['baseline']['messages_per_sec']:.0f}/s",
            ratio(a["eventq"]["messages_per_sec"], a["baseline"]["messages_per_sec"]),
            ">= 0.5x",
        )
    )
    ROWS.append(
        Row(
            "    send p99 (a)",
            _ms(a["eventq"]["latency_p99_ms"]),
            f"transaction p99 {_ms(a['baseline']['latency_p99_ms'])}",
            "",
            "< 100 ms",
        )
    )
    ROWS.append(
        Row(
            "    writes (b) 8 senders, one channel of 800: messages/s",
            f"{b['eventq']['messages_per_sec']:.0f}/s",
            f"psycopg {b['baseline']['messages_per_sec']:.0f}/s",
            ratio(b["eventq"]["messages_per_sec"], b["baseline"]["messages_per_sec"]),
            ">= 0.5x",
        )
    )
    ROWS.append(
        Row(
            "    SQLite (a): messages/s, send p99",
            f"{s['messages_per_sec']:.0f}/s, p99 {_ms(s['latency_p99_ms'])}",
            "ceiling",
            "",
            "",
        )
    )


def run_presence(args: argparse.Namespace) -> None:
    seconds = args.seconds or presence.SECONDS
    print(
        f"== presence pings beside message delivery: a realm of {presence.USERS:,} users, a "
        f"channel of {presence.SUBSCRIBERS:,} subscribers long-polling `message` queues, "
        f"{presence.MESSAGE_RATE:g} message/s sent to it over HTTP; {seconds:g} s measured "
        f"without pings, then {seconds:g} s with {presence.USERS:,} clients each pinging "
        f"{presence.PRESENCE_PATH} every {presence.PING_INTERVAL_SECS:g} s, spread evenly "
        f"({presence.PING_RATE:.1f}/s, real time, not compressed: a phase reaches "
        f"{min(presence.USERS, round(presence.PING_RATE * seconds)):,} of the clients once; "
        f"{presence.PING_CONNECTIONS} keep-alive connections); each phase after "
        f"{presence.WARMUP_SECS:g} s not counted; PostgreSQL"
    )
    print(
        _cores_shared(
            "PostgreSQL, the eventq server and the load generator (this process: the "
            f"{presence.SUBSCRIBERS:,} long-polls, the sender and the pings)"
        )
    )
    f = presence.run(seconds)
    for name in presence.PHASES:
        p = f[name]
        print(
            f"{name}: {p['messages']} messages, send -> delivery p50 "
            f"{_ms(p['latency_p50_ms'])}, p99 {_ms(p['latency_p99_ms'])}, max "
            f"{_ms(p['latency_max_ms'])} over {p['deliveries']:,} deliveries (missing "
            f"{p['missing_deliveries']}); the send's answer p50 {_ms(p['send_p50_ms'])}, p99 "
            f"{_ms(p['send_p99_ms'])}; server CPU {p['server_cpu_pct']:.0f}%, load generator "
            f"{p['client_cpu_pct']:.0f}%, machine busy {p['machine_busy_pct']:.0f}%"
        )
    p = f[presence.PHASES[1]]
    refusals = ", ".join(f"{k} x{v}" for k, v in sorted(p["ping_refusals"].items())) or "none"
    print(
        f"pings: {p['pings_sent']:,} sent in the phase (offered {f['ping_rate']:.1f}/s), "
        f"{p['pings']:,} answered 200 ({p['pings_per_sec']:.1f}/s); every answer's round trip "
        f"p50 {_ms(p['ping_p50_ms'])} p99 {_ms(p['ping_p99_ms'])}; the latest ping went "
        f"{_ms(p['ping_late_max_ms'])} after its due time; refused: {refusals}"
        + (f" (first: {p['first_ping_refusal']})" if p["first_ping_refusal"] else "")
    )
    print(f"server errors/warnings logged {f['server_errors']}")
    quiet = f[presence.PHASES[0]]
    ROWS.append(
        Row(
            f"11. presence: delivery p99 with {presence.PING_RATE:.0f} pings/s",
            _ms(p["latency_p99_ms"]),
            f"without pings {_ms(quiet['latency_p99_ms'])}",
            ratio(p["latency_p99_ms"], quiet["latency_p99_ms"]),
            "<= 1.2x",
        )
    )
    ROWS.append(
        Row(
            "    pings answered 200 / refused",
            f"{p['pings_per_sec']:.1f}/s / {sum(p['ping_refusals'].values())}",
            f"offered {f['ping_rate']:.1f}/s",
            ratio(p["pings_per_sec"], f["ping_rate"]),
            "",
        )
    )


RUNNERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "steady": run_steady,
    "fanout": run_fanout,
    "register": run_register,
    "deactivation": run_deactivation,
    "prune": run_prune,
    "latency": run_latency,
    "memory": run_memory,
    "soak": run_soak,
    "messages": run_messages,
    "cluster": run_cluster,
    "writes": run_writes,
    "presence": run_presence,
}


def _describe_tree() -> str:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {commit}{' with uncommitted changes' if dirty else ''}"


def _summary() -> None:
    if not ROWS:
        return
    headers = ("row", "eventq", "baseline (same run)", "ratio", "goal")
    cells = [headers] + [(r.what, r.eventq, r.baseline, r.ratio, r.goal) for r in ROWS]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    print("== summary")
    for index, row in enumerate(cells):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if index == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only",
        choices=CHOICES,
        help="run one benchmark (default: all but soak)",
    )
    parser.add_argument("--users", type=int, default=10_000, help="realm size (deactivation)")
    parser.add_argument(
        "--channels",
        type=int,
        default=1_000,
        help="channels of the deactivated user (deactivation)",
    )
    parser.add_argument(
        "--rounds", type=int, default=steady.ROUNDS, help="measured rounds (steady)"
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the soak runs (soak)")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help=f"measured seconds per measurement (writes: {writes.SECONDS:g}, presence: "
        f"{presence.SECONDS:g} per phase)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server with py-spy for 20 s after the measured rounds (steady)",
    )
    parser.add_argument(
        "--py-spy",
        default=os.environ.get("PY_SPY", "py-spy"),
        help="the py-spy executable for --profile (default: $PY_SPY or py-spy on PATH)",
    )
    args = parser.parse_args()
    if not 0 < args.minutes <= 24 * 60:
        parser.error("--minutes must be more than 0 and at most a day")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seconds is not None and not 0 < args.seconds <= 3600:
        parser.error("--seconds must be more than 0 and at most an hour")
    logging.basicConfig(level=logging.WARNING)
    names = [args.only] if args.only else DEFAULT_RUN
    print(
        f"eventq benchmarks on {_describe_tree()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the start"
    )
    failed = []
    for name in names:
        started = time.monotonic()
        try:
            RUNNERS[name](args)
        except Exception:
            failed.append(name)
            print(f"!! {name} FAILED:")
            traceback.print_exc(file=sys.stdout)
        print(
            f"   ({name}: {time.monotonic() - started:.0f} s, load average "
            f"{os.getloadavg()[0]:.1f})",
            flush=True,
        )
    _summary()
    if failed:
        print(f"failed: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
