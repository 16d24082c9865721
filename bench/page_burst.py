"""How the page takes a burst: N incoming messages into the open conversation
(headless Chromium, the real web layer over the unit tests' fake peer).

Measured in the page: from the first message event's arrival to the moment
all N are in the message list (a MutationObserver), and the long tasks
(PerformanceObserver "longtask", over 50 ms) in that time: count and longest.

    .venv/bin/python bench/page_burst.py [--messages 1000] [--static DIR --templates DIR]

--static/--templates: another tree's page (e.g. main's, to compare before
and after).  --cpu: also trace the renderer (Chromium's devtools.timeline)
and report the main thread's CPU time: the longest task's and the burst's
total.  On a loaded machine a task's wall time is several times its CPU
time, so the CPU figures are the ones to compare between runs.
Results: bench/PAGE.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from browser.chromium import CHROMIUM_ARGS, chromium_path
from playwright.async_api import Browser, CDPSession, Page, async_playwright
from unit import fake_api

from webpeer.web import WebConfig, create_app, default_static_dir, default_templates_dir, start_site

TOKEN = "bench-token_0123456789abcdef"

WATCH = """(count) => {
  window.__bench = { longTasks: [], first: null, done: null };
  new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) window.__bench.longTasks.push([entry.startTime, entry.duration]);
  }).observe({ type: "longtask", buffered: false });
  const target = document.querySelector('[data-testid="message-list"]');
  new MutationObserver(() => {
    const shown = target.querySelectorAll('[data-testid="message"]').length;
    if (shown > 0 && window.__bench.first === null) window.__bench.first = performance.now();
    if (shown >= count && window.__bench.done === null) window.__bench.done = performance.now();
  }).observe(target, { childList: true });
}"""


@contextlib.asynccontextmanager
async def open_conversation(
    api: fake_api.FakePeerApi, static: Path, templates: Path, ready: str
) -> AsyncIterator[tuple[Browser, Page]]:
    """The real web layer over ``api``, one Chromium page with the
    conversation with bob open, once ``ready`` (a selector) is there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = WebConfig(port=port, token=TOKEN, static_dir=static, templates_dir=templates)
    runner = await start_site(create_app(config, api))
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1100, "height": 700})
                await page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
                await page.locator('[data-peer-id="2"]').click()
                await page.wait_for_selector(ready)
                await page.wait_for_timeout(500)
                yield browser, page
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


async def start_recording(
    browser: Browser, page: Page, cpu: bool, profile: bool, interval_us: int
) -> CDPSession | None:
    """A trace of the renderer (``cpu``) and V8's sampling profiler (``profile``)."""
    if cpu:
        await browser.start_tracing(
            page=page, categories=["devtools.timeline", "disabled-by-default-devtools.timeline"]
        )
    if not profile:
        return None
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Profiler.enable")
    await cdp.send("Profiler.setSamplingInterval", {"interval": interval_us})
    await cdp.send("Profiler.start")
    return cdp


async def stop_recording(browser: Browser, cpu: bool, cdp: CDPSession | None) -> tuple[bytes, dict[str, float]]:
    """The trace (empty without ``cpu``) and the hottest functions (empty without a profiler)."""
    trace = await browser.stop_tracing() if cpu else b""
    hot = hottest(await cdp.send("Profiler.stop")) if cdp is not None else {}
    return trace, hot


async def run(
    messages: int, static: Path, templates: Path, cpu: bool, profile: bool, save_trace: Path | None = None
) -> dict[str, object]:
    fake_api.QUEUE_SIZE = messages + 100  # the whole burst fits in the subscriber's queue
    api = fake_api.FakePeerApi(my_id=1, name="alice")
    api.add_peer(2, "bob")
    async with open_conversation(api, static, templates, '[data-testid="conversation"][data-peer-id="2"]') as (
        browser,
        page,
    ):
        cdp = await start_recording(browser, page, cpu, profile, 200)
        await page.evaluate(WATCH, messages)
        for n in range(messages):
            api.receive(2, f"burst message {n} with a little text in it")
        await page.wait_for_function("() => window.__bench.done !== null", timeout=120_000)
        await page.wait_for_timeout(300)  # late long tasks are reported a little after
        bench = await page.evaluate("window.__bench")
        trace, hot = await stop_recording(browser, cpu, cdp)
        if save_trace is not None:
            save_trace.write_bytes(trace)  # for chrome://tracing or Perfetto
    first, done = bench["first"], bench["done"]
    during = [d for start, d in bench["longTasks"] if start + d >= first - 1000]
    result: dict[str, object] = {
        "messages": messages,
        "first_to_all_shown_ms": round(done - first, 1),
        "long_tasks": len(during),
        "longest_task_ms": round(max(during, default=0.0), 1),
    }
    if cpu:
        result.update(main_thread_cpu(trace))
    if profile:
        result["self_ms"] = hot
    return result


PAGE_BACK = """async () => {
  const list = document.querySelector('[data-testid="message-list"]');
  const count = () => list.querySelectorAll('[data-testid="message"]').length;
  const started = performance.now();
  let pages = 0;
  while (!list.querySelector('[data-testid="conversation-start"]')) {
    const before = count();
    list.scrollTop = 0;
    while (count() === before && !list.querySelector('[data-testid="conversation-start"]')) {
      await new Promise((resolve) => requestAnimationFrame(resolve));
    }
    pages += 1;
  }
  return { pages, shown: count(), ms: performance.now() - started };
}"""


async def page_back(history: int, static: Path, templates: Path, cpu: bool, profile: bool) -> dict[str, object]:
    """Scrolls back through ``history`` messages to the first, as fast as the
    page lets (each page asked for as soon as the last one is shown)."""
    api = fake_api.FakePeerApi(my_id=1, name="alice")
    api.add_peer(2, "bob")
    api.add_history(2, history, start=1_700_000_000.0, step=30.0)
    async with open_conversation(api, static, templates, '[data-testid="message"]') as (browser, page):
        cdp = await start_recording(browser, page, cpu, profile, 500)
        result: dict[str, object] = await page.evaluate(PAGE_BACK)
        trace, hot = await stop_recording(browser, cpu, cdp)
    result["ms"] = round(float(result["ms"]), 1)  # type: ignore[arg-type]
    if cpu:
        summary = main_thread_cpu(trace)
        summary.pop("tasks_over_5ms_cpu_ms")
        result.update(summary)
    if profile:
        result["self_ms"] = hot
    return result


def hottest(answer: dict[str, object], top: int = 15) -> dict[str, float]:
    """The functions (and the engine's own entries, e.g. "(program)") with the
    most self time in a V8 CPU profile, in ms."""
    profile = answer["profile"]
    assert isinstance(profile, dict)
    names = {}
    for node in profile["nodes"]:
        frame = node["callFrame"]
        where = frame["url"].rsplit("/", 1)[-1]
        names[node["id"]] = f"{frame['functionName'] or '(anonymous)'} {where}:{frame['lineNumber'] + 1}".strip()
    self_us: collections.Counter[str] = collections.Counter()
    for node_id, delta in zip(profile["samples"], profile["timeDeltas"], strict=True):
        self_us[names[node_id]] += delta
    return {name: round(us / 1000, 1) for name, us in self_us.most_common(top) if name != "(idle) :0"}


def main_thread_cpu(trace: bytes) -> dict[str, object]:
    """The renderer main thread's tasks in a trace: the longest one's CPU
    time (the trace's thread duration), the sum, the tasks over 5 ms in
    order (the drawing passes), in ms."""
    events = json.loads(trace)["traceEvents"]
    # The renderer's main thread is the one that does the layouts.
    layouts = collections.Counter(e["tid"] for e in events if e.get("name") == "Layout")
    if not layouts:
        return {}
    main_tid = layouts.most_common(1)[0][0]
    timed = sorted(
        (e["ts"], e.get("tdur", 0) / 1000)
        for e in events
        if e.get("ph") == "X" and e["tid"] == main_tid and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask")
    )
    tasks = [ms for _, ms in timed]
    # Where it went: the renderer's phases, CPU time summed per name (a
    # layout forced by script is inside the FunctionCall that forced it).
    phases: collections.Counter[str] = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["tid"] == main_tid and e.get("name") in PHASES:
            phases[e["name"]] += e.get("tdur", 0) / 1000
    return {
        "longest_task_cpu_ms": round(max(tasks, default=0.0), 1),
        "total_cpu_ms": round(sum(tasks), 1),
        "tasks_over_5ms_cpu_ms": [round(ms, 1) for ms in tasks if ms > 5],
        "phases_cpu_ms": {name: round(ms, 1) for name, ms in phases.most_common()},
    }


PHASES = ("FunctionCall", "Layout", "UpdateLayoutTree", "PrePaint", "Paint", "Layerize", "Commit", "ParseHTML")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--static", type=Path, default=default_static_dir())
    parser.add_argument("--templates", type=Path, default=default_templates_dir())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cpu", action="store_true", help="also trace and report main-thread CPU time")
    parser.add_argument("--profile", action="store_true", help="also report the page's hottest functions (V8 profiler)")
    parser.add_argument(
        "--page-back", type=int, metavar="N", help="instead of a burst: page back through N messages of history"
    )
    parser.add_argument("--save-trace", type=Path, help="with --cpu: write the (last run's) trace to this file")
    args = parser.parse_args()
    for _ in range(args.runs):
        if args.page_back:
            result = asyncio.run(page_back(args.page_back, args.static, args.templates, args.cpu, args.profile))
            print(json.dumps(result), flush=True)
            continue
        print(
            json.dumps(
                asyncio.run(run(args.messages, args.static, args.templates, args.cpu, args.profile, args.save_trace))
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
