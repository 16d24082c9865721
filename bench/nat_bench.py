"""Time from CONNECT to the first delivered message, per NAT pair, with 20 ms
one-way delay on the lab's internet links (so one round trip is >= 40 ms).

Needs root (it builds the NAT lab of tests/netlab in network namespaces).

    sudo .venv/bin/python bench/nat_bench.py [--delay-ms 20] [--second-delay-ms 50] [--rounds 3] [--port-mapped [pcp|upnp]]
        [--ipv6] [--only symmetric/symmetric,port_restricted/symmetric]

``--port-mapped``: instead of every pair, the pairs that relay without help
(symmetric against symmetric or port-restricted), with miniupnpd granting
port mappings on both site routers: PCP (``--port-mapped`` or
``--port-mapped pcp``), or UPnP IGD alone (``--port-mapped upnp``: NAT-PMP
and PCP off, so the peers fall back to it).  ``--ipv6``: a pair behind two
symmetric IPv4 NATs whose sites also have IPv6 (no NAT66, home firewalls),
which goes direct over IPv6 (docs/PROTOCOL.md 11.10).

Two times from alice's POST /api/messages (which sends CONNECT): until the
message reaches bob (the `message` event on his page's websocket, taken in
his namespace: the namespaces share the machine's clock), and until alice's
page shows it `delivered` (bob's receipt back; polled every 5 ms).  Each is
also given in round trips of the lab (2 x delay).  Targets (issue 4): at most
3 round trips for cone and port-restricted pairs; (issue 15) the first
message of a pair that ends relayed in under 4 round trips (the relay starts
beside the connectivity checks, not after their 2 s timeout).

Wall-clock time is round trips plus local work (the QUIC handshake in
Python, SQLite, the lab's userspace delay line), so the bench also counts the
round trips themselves: each pair runs again at --second-delay-ms,
and (t2 - t1) / (rtt2 - rtt1) is how many round trips the time grows by,
which the local work does not.
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

from netlab import NatType, unavailable_reason  # noqa: E402
from test_nat_traversal import PAIRS, expected_path, run_pair  # noqa: E402

MAPPED_PAIRS = [(NatType.SYMMETRIC, NatType.SYMMETRIC), (NatType.PORT_RESTRICTED, NatType.SYMMETRIC)]
IPV6_PAIRS = [(NatType.SYMMETRIC, NatType.SYMMETRIC)]


def measure(
    nat_a, nat_b, delay_ms: float, rounds: int, port_mapping: str = "", ipv6: bool = False
) -> dict[str, object]:
    """``port_mapping``: "" (none), "pcp" or "upnp"."""
    times, arrivals, paths, upgrades = [], [], set(), []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="peerlink-natbench-") as tmp:
            result = run_pair(
                Path(tmp),
                nat_a,
                nat_b,
                delay_ms=delay_ms,
                port_mapping=bool(port_mapping),
                ipv6=ipv6,
                upnp=port_mapping == "upnp",
            )
        times.append(result["first_delivery"] * 1000)
        arrivals.append(result["arrived"] * 1000)
        path = _path_name(result["connection"])
        if result["eventual"] != result["connection"]:
            path += " -> " + _path_name(result["eventual"])
            upgrades.append(result.get("upgrade_s", 0.0))
        paths.add(path)
    rtt = 2 * delay_ms
    suffix = f", port mapped ({port_mapping})" if port_mapping else ", both with IPv6" if ipv6 else ""
    return {
        "pair": f"{nat_a.name.lower()} / {nat_b.name.lower()}" + suffix,
        "path": "/".join(sorted(paths)),
        "expected": "direct" if port_mapping or ipv6 else expected_path(nat_a, nat_b),
        "delay_ms": delay_ms,
        "receipt_ms": round(statistics.median(times), 1),
        "receipt_min_ms": round(min(times), 1),
        "receipt_max_ms": round(max(times), 1),
        "receipt_rtts": round(statistics.median(times) / rtt, 2),
        "arrival_ms": round(statistics.median(arrivals), 1),
        "arrival_min_ms": round(min(arrivals), 1),
        "arrival_max_ms": round(max(arrivals), 1),
        "arrival_rtts": round(statistics.median(arrivals) / rtt, 2),
        "upgrade_s": [round(u, 1) for u in upgrades],
    }


def _path_name(connection: dict[str, object]) -> str:
    """``direct``, ``direct (IPv6)`` or ``relayed``."""
    state = str(connection["state"])
    return f"{state} (IPv6)" if connection.get("family") == "IPv6" else state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--second-delay-ms", type=float, default=50.0, help="0: skip the round-trip count")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--port-mapped",
        nargs="?",
        const="pcp",
        default="",
        choices=("pcp", "upnp"),
        help="only the pairs helped by router port mapping, mapped with PCP (the default) or UPnP IGD",
    )
    parser.add_argument("--ipv6", action="store_true", help="only a symmetric pair with IPv6 on both sides")
    parser.add_argument("--only", default="", help="comma-separated pairs as the table names them, e.g. symmetric/none")
    args = parser.parse_args()
    only = {pair.strip().lower() for pair in args.only.split(",") if pair.strip()}
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"nat_bench: {reason}")
    rows = []
    pairs = MAPPED_PAIRS if args.port_mapped else IPV6_PAIRS if args.ipv6 else PAIRS
    for nat_a, nat_b in pairs:
        if only and f"{nat_a.name.lower()}/{nat_b.name.lower()}" not in only:
            continue
        row = measure(nat_a, nat_b, args.delay_ms, args.rounds, args.port_mapped, args.ipv6)
        # Relayed pairs too: their first message no longer waits for the
        # checks' 2 s timeout, so its round trips can be counted the same way.
        if args.second_delay_ms and row["path"].split(" ")[0] in ("direct", "relayed"):
            second = measure(nat_a, nat_b, args.second_delay_ms, args.rounds, args.port_mapped, args.ipv6)
            extra_rtt = 2 * (args.second_delay_ms - args.delay_ms)
            row["second"] = second
            row["counted_arrival_rtts"] = round((second["arrival_ms"] - row["arrival_ms"]) / extra_rtt, 2)
            row["counted_receipt_rtts"] = round((second["receipt_ms"] - row["receipt_ms"]) / extra_rtt, 2)
        rows.append(row)
        print(json.dumps(row), flush=True)
    rtt_ms = 2 * args.delay_ms
    print(
        f"\n| pair | path | POST -> at bob, median (min-max) ms | in {rtt_ms:.0f} ms round trips | counted round trips "
        "| POST -> `delivered` at alice, median (min-max) ms | in round trips | counted | relayed -> direct after (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        upgrade = ", ".join(str(u) for u in row["upgrade_s"]) or "-"
        print(
            f"| {row['pair']} | {row['path']} | {row['arrival_ms']} ({row['arrival_min_ms']}-{row['arrival_max_ms']}) "
            f"| {row['arrival_rtts']} | {row.get('counted_arrival_rtts', '-')} "
            f"| {row['receipt_ms']} ({row['receipt_min_ms']}-{row['receipt_max_ms']}) "
            f"| {row['receipt_rtts']} | {row.get('counted_receipt_rtts', '-')} | {upgrade} |"
        )
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    name = (
        "nat_bench_port_mapped_upnp.json"
        if args.port_mapped == "upnp"
        else "nat_bench_port_mapped.json"
        if args.port_mapped
        else "nat_bench_ipv6.json"
        if args.ipv6
        else "nat_bench.json"
    )
    (out / name).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
