"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

import argparse
import logging

from bench import deactivation, latency, memory


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", choices=["latency", "deactivation", "memory"], help="run one benchmark"
    )
    parser.add_argument("--users", type=int, default=10_000, help="realm size (deactivation)")
    parser.add_argument(
        "--channels",
        type=int,
        default=1_000,
        help="channels of the deactivated user (deactivation)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.only in (None, "latency"):
        print("== delivery latency: commit in another process -> parked long-poll answered")
        for backend in ("postgresql", "sqlite"):
            figures = latency.run(backend)
            print(
                f"{backend:>10}: median {figures['median_ms']:.1f} ms, "
                f"p95 {figures['p95_ms']:.1f} ms "
                f"(baseline: a plain request round trip, median "
                f"{figures['baseline_round_trip_ms']:.1f} ms)"
            )
    if args.only in (None, "deactivation"):
        print(
            f"== deactivating a user in {args.channels} channels, realm of {args.users} users,"
            " PostgreSQL, every other user's long-poll parked"
        )
        f = deactivation.run(args.users, args.channels)
        print(
            f"action: {f['action_ms']:.0f} ms wall, {f['statements']} SQL statements; wrote "
            f"{f['events']} events ({f['peer_remove_events']} grouped peer_remove) to "
            f"{f['recipients']} recipients in all"
        )
        print(
            f"parked polls: {f['parked_polls']}; all answered {f['all_answered_ms']:.0f} ms "
            f"after commit (median {f['median_answered_ms']:.0f} ms); baseline: a bare "
            f"Tornado process answers as many parked requests in {f['bare_tornado_ms']:.0f} ms "
            f"(ratio {f['all_answered_ms'] / f['bare_tornado_ms']:.1f}x)"
        )
        print(
            f"set-up: {f['register_per_sec']:.0f} registers/s; server memory per live queue "
            f"{f['rss_per_live_queue_bytes']:.0f} bytes (RSS growth / queues, incl. parked "
            "connections)"
        )
    if args.only in (None, "memory"):
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


if __name__ == "__main__":
    main()
