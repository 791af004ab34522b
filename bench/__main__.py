"""`make bench`: run every benchmark and print its figures."""

from __future__ import annotations

import argparse
import logging

from bench import latency


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


if __name__ == "__main__":
    main()
