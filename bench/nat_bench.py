"""Time from CONNECT to the first delivered message, per NAT pair, with 20 ms
one-way delay on the lab's internet links (so one round trip is >= 40 ms).

Needs root (it builds the NAT lab of tests/netlab in network namespaces).

    sudo .venv/bin/python bench/nat_bench.py [--delay-ms 20] [--rounds 3]

Two times from alice's POST /api/messages (which sends CONNECT): until the
message reaches bob (the `message` event on his page's websocket, taken in
his namespace: the namespaces share the machine's clock), and until alice's
page shows it `delivered` (bob's receipt back; polled every 5 ms).  Each is
also given in round trips of the lab (2 x delay).  Targets (issue 4): at most
3 round trips for cone and port-restricted pairs; at most 3 s to relayed for
symmetric pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "network"), str(ROOT)]

from netlab import unavailable_reason  # noqa: E402
from test_nat_traversal import PAIRS, expected_path, run_pair  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"nat_bench: {reason}")
    rows = []
    for nat_a, nat_b in PAIRS:
        times, arrivals, paths, upgrades = [], [], set(), []
        for _ in range(args.rounds):
            with tempfile.TemporaryDirectory(prefix="peerlink-natbench-") as tmp:
                result = run_pair(Path(tmp), nat_a, nat_b, delay_ms=args.delay_ms)
            times.append(result["first_delivery"] * 1000)
            arrivals.append(result["arrived"] * 1000)
            path = result["connection"]["state"]
            if result["eventual"]["state"] != path:
                path += " -> " + result["eventual"]["state"]
                upgrades.append(result["upgrade_s"])
            paths.add(path)
        rtt = 2 * args.delay_ms
        median = statistics.median(times)
        arrival = statistics.median(arrivals)
        rows.append({
            "pair": f"{nat_a.name.lower()} / {nat_b.name.lower()}", "path": "/".join(sorted(paths)),
            "expected": expected_path(nat_a, nat_b), "median_ms": round(median, 1),
            "min_ms": round(min(times), 1), "max_ms": round(max(times), 1), "median_rtts": round(median / rtt, 2),
            "arrival_ms": round(arrival, 1), "arrival_min_ms": round(min(arrivals), 1),
            "arrival_max_ms": round(max(arrivals), 1), "arrival_rtts": round(arrival / rtt, 2),
            "upgrade_s": [round(u, 1) for u in upgrades],
        })
        print(json.dumps(rows[-1]), flush=True)
    rtt_ms = 2 * args.delay_ms
    print(f"\n| pair | path | POST -> at bob, median (min-max) ms | round trips ({rtt_ms:.0f} ms) "
          "| POST -> `delivered` at alice, median (min-max) ms | round trips | relayed -> direct after (s, each round) |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        upgrade = ", ".join(str(u) for u in row["upgrade_s"]) or "-"
        print(f"| {row['pair']} | {row['path']} | {row['arrival_ms']} ({row['arrival_min_ms']}-{row['arrival_max_ms']}) "
              f"| {row['arrival_rtts']} | {row['median_ms']} ({row['min_ms']}-{row['max_ms']}) "
              f"| {row['median_rtts']} | {upgrade} |")
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "nat_bench.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
