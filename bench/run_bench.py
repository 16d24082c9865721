"""Run the UDP request/reply benchmark: every scenario, one after another, in one run.

    .venv/bin/python bench/run_bench.py [--warmup 2] [--duration 5] [--only NAME] [--rounds N]

Builds bench/loadgen.c and bench/udp_echo.c into bench/build/, then for each
scenario in scenarios.SCENARIOS: starts its server pinned to one core
(``taskset -c 0``), waits until it answers a STUN Binding, writes the
scenario's request templates, runs the closed-loop generator pinned to the
other core (``taskset -c 1``) once per load, and stops the server.  The
server's CPU use over the measured window is read from /proc.  Results go to
bench/out/results-<time>.json and .md (and latest.json / latest.md); the
markdown table is printed at the end.

The machine is shared and noisy: compare rows of one run (the ratio columns),
not absolute numbers across runs.  ``--rounds N`` repeats the whole list N
times, interleaved, and reports medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scenarios
from scenarios import Context, Load, Scenario

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
C_PROGRAMS = ("loadgen", "udp_echo")
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0

# Ratio columns of the table: (column title, base scenario at MAIN_LOAD, metric).
# A ratio of server CPU per reply above 1 means more work per request than the
# base; a replies/s ratio above 1 means more throughput.
RATIOS = (
    ("replies/s × coturn", "coturn Binding", "replies_per_s"),
    ("µs/reply × coturn", "coturn Binding", "server_us_per_reply"),
    ("µs/reply × uvloop echo", "asyncio echo, uvloop", "server_us_per_reply"),
)


class BenchError(Exception):
    """A scenario could not be run (server did not start, generator failed ...)."""


# ---- building ----------------------------------------------------------------


def build(build_dir: Path) -> None:
    """Compile the C programs when a source is newer than its binary."""
    build_dir.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "cc")
    for name in C_PROGRAMS:
        src, out = BENCH_DIR / f"{name}.c", build_dir / name
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = [cc, "-O2", "-Wall", "-Wextra", "-o", str(out), str(src)]
        log(f"build: {shlex.join(cmd)}")
        subprocess.run(cmd, check=True)


# ---- server processes ------------------------------------------------------------


@dataclass
class Server:
    """A running server process and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """``argv`` run under ``taskset -c cpu`` (taskset execs, so the pid is the program's)."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


def start_server(ctx: Context, scenario: Scenario, cpu: int | None, slug: str) -> Server:
    """Start the scenario's server on a free port and wait until it answers."""
    port = scenarios.free_udp_port()
    argv = pinned(cpu, scenario.server(ctx, port))
    log_path = ctx.work_dir / f"{slug}.server.log"
    with log_path.open("wb") as log_file:
        log_file.write(f"$ {shlex.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = Server(proc, port, log_path)
    try:
        wait_ready(server)
    except BenchError:
        stop_server(server)
        raise
    return server


def wait_ready(server: Server) -> None:
    """Send STUN Binding requests until anything comes back from the server's port."""
    probe = struct.pack("!HHI12s", scenarios.BINDING_REQUEST, 0, scenarios.MAGIC_COOKIE, os.urandom(12))
    deadline = time.monotonic() + READY_TIMEOUT_S
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise BenchError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
            try:
                sock.sendto(probe, ("127.0.0.1", server.port))
                _, addr = sock.recvfrom(4096)
            except (TimeoutError, ConnectionRefusedError):
                continue
            if addr == ("127.0.0.1", server.port):
                return
    raise BenchError(f"server did not answer on 127.0.0.1:{server.port} within {READY_TIMEOUT_S} s")


def stop_server(server: Server) -> None:
    """SIGTERM, then SIGKILL if it lingers; only ever our own child."""
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


def sched_seconds(pid: int) -> tuple[float, float] | None:
    """(on-CPU, waiting-to-run) seconds summed over a process's threads and
    those of its descendants (``rendezvous --workers N`` is a supervisor and N
    worker processes), or None if the process is gone.

    From /proc/PID/task/*/schedstat.  Time spent runnable but not running is
    the noise this machine adds: someone else had the pinned core.
    """
    run_ns = wait_ns = 0
    pending, seen = [pid], set()
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        try:
            tasks = list(Path(f"/proc/{current}/task").iterdir())
        except OSError:
            if current == pid:
                return None
            continue  # a child that just exited
        for task in tasks:
            try:
                fields = (task / "schedstat").read_text().split()
                children = (task / "children").read_text().split()
            except OSError:
                continue  # a thread that just exited
            run_ns += int(fields[0])
            wait_ns += int(fields[1])
            pending.extend(int(child) for child in children)
    return run_ns / 1e9, wait_ns / 1e9


# ---- one measurement -------------------------------------------------------------


def sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def measure(
    ctx: Context, scenario: Scenario, server: Server, load: Load, args: argparse.Namespace, slug: str
) -> dict[str, Any]:
    """Run the generator once against a running server; return its numbers plus server CPU."""
    templates = scenario.templates(ctx, server.port, load)
    if not templates:
        raise BenchError("template factory returned no templates")
    template_path = ctx.work_dir / f"{slug}.{load.label}.templates"
    template_path.write_text(scenarios.template_lines(templates))
    argv = pinned(
        args.gen_cpu,
        [
            str(ctx.build_dir / "loadgen"),
            "--host", "127.0.0.1",
            "--port", str(server.port),
            "--templates", str(template_path),
            "--sockets", str(load.sockets),
            "--window", str(load.window),
            "--warmup", str(args.warmup),
            "--duration", str(args.duration),
            "--timeout-ms", str(args.timeout_ms),
        ],
    )  # fmt: skip
    started = time.monotonic()
    gen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Scheduler accounting over (about) the generator's measured window; the
    # generator's own window starts a few ms after this, so both samples fall
    # inside its lifetime.
    pids = (("server", server.proc.pid), ("gen", gen.pid))
    sleep_until(started + args.warmup)
    window_start = time.monotonic()
    before = {name: sched_seconds(pid) for name, pid in pids}
    sleep_until(started + args.warmup + args.duration)
    window = time.monotonic() - window_start
    after = {name: sched_seconds(pid) for name, pid in pids}
    try:
        out, err = gen.communicate(timeout=args.warmup + args.duration + 60)
    except subprocess.TimeoutExpired:
        gen.kill()
        gen.communicate()
        raise BenchError("generator did not finish") from None
    if gen.returncode != 0:
        raise BenchError(f"generator failed ({gen.returncode}): {err.strip()}")
    try:
        result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise BenchError(f"generator printed no JSON: {out!r} {err!r}") from None
    for name in ("server", "gen"):
        b, a = before[name], after[name]
        if b is not None and a is not None:
            result[f"{name}_cpu_pct"] = round(100 * (a[0] - b[0]) / window, 1)
            result[f"{name}_waited_pct"] = round(100 * (a[1] - b[1]) / window, 1)
            if result["replies_per_s"] > 0:
                # CPU per reply barely moves when a neighbour steals the core,
                # unlike replies/s: the steadier number on a shared machine.
                # It includes the kernel's loopback delivery work done in the
                # process's own send calls.
                per_reply = (a[0] - b[0]) * 1e6 / (result["replies_per_s"] * window)
                result[f"{name}_us_per_reply"] = round(per_reply, 2)
    if server.proc.poll() is not None:
        raise BenchError(f"server died during the run:\n{server.log_tail()}")
    return result


def warnings_for(scenario: Scenario, result: dict[str, Any]) -> list[str]:
    """What makes a row suspect: wrong replies, losses, a saturated generator."""
    notes = []
    replies = result["replies"]
    if replies == 0:
        notes.append("no replies")
    elif scenario.expect == "success" and result["success_responses"] != replies:
        notes.append(f"{replies - result['success_responses']} non-success replies")
    elif scenario.expect == "echo" and result["other_replies"] != replies:
        notes.append(f"{replies - result['other_replies']} non-echo replies")
    for key in ("lost", "stale", "send_errors", "recv_errors"):
        if result.get(key):
            notes.append(f"{result[key]} {key.replace('_', ' ')}")
    if result.get("gen_cpu_pct", 0) >= 90 and result.get("server_cpu_pct", 100) < 90:
        notes.append("generator-bound: generator near 100% CPU, server not")
    waited = [
        f"{who} waited {result[f'{who}_waited_pct']:.0f}%"
        for who in ("server", "gen")
        if result.get(f"{who}_waited_pct", 0) >= 10
    ]
    if waited:
        notes.append("noisy: " + ", ".join(waited))
    return notes


# ---- a whole run ---------------------------------------------------------------


def slugify(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_scenario(ctx: Context, scenario: Scenario, args: argparse.Namespace, round_no: int) -> list[dict[str, Any]]:
    """All loads of one scenario against one server process; one row per load."""
    base = {"scenario": scenario.name, "round": round_no}
    reason = scenario.requires(ctx)
    if reason:
        return [{**base, "load": load.label, "status": "skipped", "reason": reason} for load in scenario.loads]
    slug = f"r{round_no}-{slugify(scenario.name)}"
    try:
        server = start_server(ctx, scenario, args.server_cpu, slug)
    except BenchError as exc:
        return [{**base, "load": load.label, "status": "error", "reason": str(exc)} for load in scenario.loads]
    rows = []
    try:
        for load in scenario.loads:
            log(f"round {round_no}: {scenario.name} @ {load.label} (port {server.port})")
            try:
                result = measure(ctx, scenario, server, load, args, slug)
            except BenchError as exc:
                rows.append({**base, "load": load.label, "status": "error", "reason": str(exc)})
                if server.proc.poll() is not None:
                    break
                continue
            row = {**base, "load": load.label, "status": "ok", **result}
            row["warnings"] = warnings_for(scenario, result)
            log(
                f"    {result['replies_per_s']:>10.0f} replies/s  p50 {result['p50_us']:.0f} us  "
                f"p99 {result['p99_us']:.0f} us  server CPU {cpu_cell(result, 'server')}  "
                f"gen CPU {cpu_cell(result, 'gen')}" + (f"  [{'; '.join(row['warnings'])}]" if row["warnings"] else "")
            )
            rows.append(row)
    finally:
        stop_server(server)
    return rows


MEDIAN_KEYS = (
    "replies_per_s",
    "p50_us",
    "p99_us",
    "p999_us",
    "mean_us",
    "server_cpu_pct",
    "server_waited_pct",
    "gen_cpu_pct",
    "gen_waited_pct",
    "server_us_per_reply",
    "gen_us_per_reply",
)
SUM_KEYS = (
    "sent",
    "replies",
    "lost",
    "stale",
    "send_errors",
    "recv_errors",
    "success_responses",
    "error_responses",
    "other_replies",
)


def quietness(row: dict[str, Any]) -> float:
    """How much the row's processes waited for their cores (lower: less disturbed)."""
    return float(row.get("server_waited_pct", 100.0)) + float(row.get("gen_waited_pct", 100.0))


def summarise(rows: list[dict[str, Any]], selected: list[Scenario], pick: str) -> list[dict[str, Any]]:
    """One line per (scenario, load) and the ratio columns.

    ``pick="quietest"`` takes, per line, the round whose server and generator
    waited least for their cores (noise here only ever slows things down);
    ``pick="median"`` takes medians over rounds.  Counts are summed either way.
    """
    summary = []
    for scenario in selected:
        for load in scenario.loads:
            mine = [r for r in rows if r["scenario"] == scenario.name and r["load"] == load.label]
            ok = [r for r in mine if r["status"] == "ok"]
            line: dict[str, Any] = {"scenario": scenario.name, "load": load.label, "runs": len(ok)}
            if not ok:
                line["status"] = mine[0]["status"] if mine else "missing"
                line["reason"] = mine[0].get("reason", "") if mine else ""
                summary.append(line)
                continue
            line["status"] = "ok"
            if pick == "quietest":
                chosen = min(ok, key=quietness)
                line["round"] = chosen["round"]
                line.update({key: chosen[key] for key in MEDIAN_KEYS if key in chosen})
            else:
                for key in MEDIAN_KEYS:
                    values = [r[key] for r in ok if key in r]
                    if values:
                        line[key] = statistics.median(values)
            for key in SUM_KEYS:
                line[key] = sum(r[key] for r in ok)
            line["warnings"] = warnings_for(scenario, line)
            line["notes"] = scenario.notes
            summary.append(line)
    main = scenarios.MAIN_LOAD.label
    for title, base_name, metric in RATIOS:
        base = next(
            (s for s in summary if s["scenario"] == base_name and s["load"] == main and s["status"] == "ok"), None
        )
        for line in summary:
            if base and line["status"] == "ok" and base.get(metric) and metric in line:
                line[title] = line[metric] / base[metric]
    return summary


def cpu_cell(line: dict[str, Any], who: str) -> str:
    """'97 (3)': share of the measured window on CPU, and runnable but waiting."""
    cpu, waited = line.get(f"{who}_cpu_pct"), line.get(f"{who}_waited_pct")
    if cpu is None or waited is None:
        return "?"
    return f"{cpu:.0f} ({waited:.0f})"


def markdown(summary: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table, ratios first-class."""
    ratio_cols = [title for title, _, _ in RATIOS]
    head = ["scenario", "sockets x window", "replies/s", "server CPU µs/reply", *ratio_cols]
    head += ["p50 µs", "p99 µs", "p99.9 µs", "server CPU % (waited)", "gen CPU % (waited)", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    previous = None
    for s in summary:
        first_of_scenario = s["scenario"] != previous
        previous = s["scenario"]
        if s["status"] != "ok":
            cells = [s["scenario"], s["load"], s["status"], *[""] * (len(head) - 4), s.get("reason", "")[:80]]
        else:
            described = s.get("notes", "") if first_of_scenario else ""
            notes = "; ".join(filter(None, [described, *s.get("warnings", [])]))
            cells = [
                s["scenario"],
                s["load"],
                f"{s['replies_per_s']:,.0f}",
                f"{s['server_us_per_reply']:.1f}" if "server_us_per_reply" in s else "?",
                *(f"{s[c]:.2f}" if c in s else "n/a" for c in ratio_cols),
                f"{s['p50_us']:.0f}",
                f"{s['p99_us']:.0f}",
                f"{s['p999_us']:.0f}",
                cpu_cell(s, "server"),
                cpu_cell(s, "gen"),
                notes,
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    rounds = f"{meta['rounds']} round(s)"
    if meta["rounds"] > 1:
        rounds += f", {meta['pick']} round per row" if meta["pick"] == "quietest" else ", medians"
    header = (
        f"{meta['date']} · `{meta['command']}` · {meta['warmup_s']} s warm-up + {meta['duration_s']} s measured"
        f" per row · {rounds} · server on CPU {meta['server_cpu']}, generator on CPU {meta['gen_cpu']}"
    )
    return header + "\n\n" + "\n".join(lines) + "\n"


def environment(ctx: Context) -> dict[str, Any]:
    """What the numbers were measured on."""
    env: dict[str, Any] = {"kernel": platform.release(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                env["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = "import sys, importlib.metadata as m; print(sys.version.split()[0]); print(m.version('uvloop'))"
    found = subprocess.run([str(ctx.python), "-c", probe], capture_output=True, text=True, check=False)
    versions = found.stdout.split()
    if versions:
        env["python"] = versions[0]
    if len(versions) > 1:
        env["uvloop"] = versions[1]
    if shutil.which("turnserver"):
        ts = subprocess.run(["turnserver", "--version"], capture_output=True, text=True, check=False)
        env["coturn"] = (ts.stdout or ts.stderr).strip().splitlines()[-1:] or ["?"]
        env["coturn"] = env["coturn"][0]
    return env


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    venv_python = REPO_DIR / ".venv" / "bin" / "python"
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring (default 2)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per row (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole list N times, interleaved")
    parser.add_argument(
        "--pick",
        choices=("quietest", "median"),
        default="quietest",
        help="with several rounds: per row, the least disturbed round (default) or medians",
    )
    parser.add_argument("--report", type=Path, help="re-render the table of a results JSON (with --pick) and exit")
    parser.add_argument("--only", help="run only scenarios whose name contains this (case-insensitive)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--timeout-ms", type=int, default=1000, help="a request unanswered this long is lost")
    parser.add_argument(
        "--python",
        type=Path,
        default=venv_python if venv_python.exists() else Path(sys.executable),
        help="interpreter for the Python servers (default: the repo's .venv)",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--gen-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out")
    args = parser.parse_args(argv)
    if args.no_pin:
        args.server_cpu = args.gen_cpu = None
    else:
        allowed = os.sched_getaffinity(0)
        if {args.server_cpu, args.gen_cpu} - allowed or args.server_cpu == args.gen_cpu:
            parser.error(f"need two distinct CPUs from {sorted(allowed)} (or --no-pin)")
        if not shutil.which("taskset"):
            parser.error("taskset not found (util-linux); use --no-pin to run unpinned")
    return args


def report(path: Path, pick: str) -> int:
    """Print the table of an earlier run, summarised again."""
    document = json.loads(path.read_text())
    names = {row["scenario"] for row in document["rows"]}
    selected = [s for s in scenarios.SCENARIOS if s.name in names]
    meta = {**document["meta"], "pick": pick}
    print(markdown(summarise(document["rows"], selected, pick), meta))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        return report(args.report, args.pick)
    selected = scenarios.by_name(args.only)
    if args.list or not selected:
        for s in scenarios.SCENARIOS:
            print(f"{s.name:45} loads {', '.join(load.label for load in s.loads)}")
        return 0 if selected else 2

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    work_dir = args.out / f"run-{stamp}"
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(python=args.python, bench_dir=BENCH_DIR, build_dir=BENCH_DIR / "build", work_dir=work_dir)
    build(ctx.build_dir)

    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for round_no in range(1, args.rounds + 1):
        for scenario in selected:
            rows.extend(run_scenario(ctx, scenario, args, round_no))
    elapsed = time.monotonic() - started

    meta = {
        "date": date,
        "command": shlex.join(["python", "bench/run_bench.py", *(sys.argv[1:] if argv is None else argv)]),
        "warmup_s": args.warmup,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "pick": args.pick,
        "server_cpu": args.server_cpu,
        "gen_cpu": args.gen_cpu,
        "elapsed_s": round(elapsed, 1),
        "environment": environment(ctx),
    }
    summary = summarise(rows, selected, args.pick)
    table = markdown(summary, meta)
    document = {"meta": meta, "summary": summary, "rows": rows}
    (args.out / f"results-{stamp}.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / f"results-{stamp}.md").write_text(table)
    shutil.copyfile(args.out / f"results-{stamp}.json", args.out / "latest.json")
    shutil.copyfile(args.out / f"results-{stamp}.md", args.out / "latest.md")
    print(table)
    log(f"{elapsed:.0f} s; results in {args.out / f'results-{stamp}.json'}")
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
