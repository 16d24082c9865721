"""One headless Chromium for every browser test that asks for ``browser``.

Starting Playwright's driver and launching Chromium costs several seconds on
a loaded two-core machine (about 5 s measured with the suite running), which
most browser tests paid once each.  The browser is shared instead; what a
test must not share, it still gets fresh: every page opens in a browser
context of its own (no cookies, storage, permissions or handlers carried
over), and the fixtures close their contexts when the test ends.

Playwright's objects belong to the event loop that started them, so a test
that uses the shared browser runs on the session's loop: this file marks it
so (``pytest_collection_modifyitems``), and every async fixture such a test
uses must run there too, declared with
``@pytest_asyncio.fixture(loop_scope="session")``; one that is not stops the
run at collection with its name, rather than hanging in a test.  A test that
does not ask for ``browser`` (directly or through a fixture) is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestClient, TestServer
from browser.chromium import CHROMIUM_ARGS, chromium_path
from playwright.async_api import Browser, async_playwright, expect
from pytest_asyncio import is_async_test

SHARED_LOOP = "session"
EXPECT_MS = 20_000
"""How long expect() waits for the page by default (Playwright's own is 5 s): the
suite's WAIT (tests/processes.py), as a deadline only bounds how long a failure
takes to show, and a loaded two-core CI machine can take seconds to render."""


@pytest.fixture(scope="session", autouse=True)
def _patient_expect() -> None:
    expect.set_options(timeout=EXPECT_MS)


@pytest_asyncio.fixture(scope="session", loop_scope=SHARED_LOOP)
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, launched once; tests open their own contexts in it."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope=SHARED_LOOP)
async def shared_loop_aiohttp_client(
    aiohttp_client_cls: type[TestClient[Any, Any]],
) -> AsyncIterator[Callable[..., Awaitable[TestClient[Any, Any]]]]:
    """pytest-aiohttp's ``aiohttp_client`` (same call) for fixtures on the shared
    loop: that one runs on each test's own loop, where a site would never be served."""
    started: list[TestClient[Any, Any]] = []

    async def start(
        target: web.Application | BaseTestServer, *, server_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> TestClient[Any, Any]:
        server = target if isinstance(target, BaseTestServer) else TestServer(target, **(server_kwargs or {}))
        client = aiohttp_client_cls(server, **kwargs)
        await client.start_server()
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        await client.close()


def _uses_the_shared_browser(item: pytest.Function) -> bool:
    definitions = item._fixtureinfo.name2fixturedefs.get("browser", ())
    return bool(definitions) and definitions[-1].func.__module__ == __name__


def _loop_of(definition: pytest.FixtureDef[object], default: str) -> str | None:
    """The loop an async fixture runs on (pytest-asyncio's mark); None for a plain one."""
    function = definition.func
    if not (inspect.iscoroutinefunction(function) or inspect.isasyncgenfunction(function)):
        return None
    return str(getattr(function, "_loop_scope", None) or default)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    default = str(config.getini("asyncio_default_fixture_loop_scope") or "function")
    on_the_shared_loop = pytest.mark.asyncio(loop_scope=SHARED_LOOP)
    for item in items:
        if not isinstance(item, pytest.Function) or not is_async_test(item) or not _uses_the_shared_browser(item):
            continue
        item.add_marker(on_the_shared_loop, append=False)  # before any module-wide loop_scope mark
        for name, definitions in item._fixtureinfo.name2fixturedefs.items():
            loop = _loop_of(definitions[-1], default)
            if loop not in (None, SHARED_LOOP):
                raise pytest.UsageError(
                    f"{item.nodeid}: the async fixture {name!r} runs on the {loop} event loop, but the test uses"
                    f" the shared Chromium, which lives on the {SHARED_LOOP} loop: declare it with"
                    f' @pytest_asyncio.fixture(loop_scope="{SHARED_LOOP}") (tests/browser/conftest.py)'
                )
