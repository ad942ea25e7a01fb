"""Session-wide fixtures: the embedded stack starts once; each test gets its own prefixes."""

from __future__ import annotations

import gc
import os
import tracemalloc
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from services.common.config import Settings
from tests.support.stack import STARTED, Stack, System, start_stack, start_system
from tests.support.tokens import TokenIssuer

# Node 20 where scripts/install.sh put it when the machine's was older (the Makefile puts
# it first on PATH; a test file run alone, outside make, gets it here).
_TOOLS_NODE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), ".tools/node/node_modules/.bin"
)
if os.path.isdir(_TOOLS_NODE) and _TOOLS_NODE not in os.environ.get("PATH", "").split(":"):
    os.environ["PATH"] = _TOOLS_NODE + os.pathsep + os.environ.get("PATH", "")

# The longest files (measured with --durations), started first: the two xdist
# workers take one file at a time (scripts/check.sh), so the long ones overlap
# instead of one running alone at the end. The rest keep their order.
LONGEST_FIRST = (
    "tests/e2e/test_delivery_liveness.py",
    "tests/e2e/test_make_run.py",
    "tests/e2e/test_cli_hardening.py",
    "tests/fuzz/test_openapi.py",
    "tests/loadtest/test_soak.py",
    "tests/loadtest/test_bench_smoke.py",
    "tests/e2e/test_cli_rooms.py",
    "tests/e2e/test_rooms.py",
    "tests/e2e/test_messaging_faults.py",
    "tests/web/test_chat_browser.py",
    "tests/web/test_chat_suite.py",
    "tests/embedded/test_kafka_size.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {path: n for n, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


SERVICE_LOG_LINES = 25


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that ran against the whole system gets the services' last log
    lines in its report: a failure in CI, on a machine that is gone, says where a
    message stopped."""
    report = yield
    sysm = getattr(item, "funcargs", {}).get("system")
    if report.failed and call.when == "call" and isinstance(sysm, System):
        for out in sorted(sysm.cfg.data_dir.glob("*.out")):
            # Our own loggers' lines: not the access log, not a client library's
            # retries (a broker restart fills a log with those).
            lines = [line for line in out.read_text(errors="replace").splitlines()
                     if '"logger":"services.' in line][-SERVICE_LOG_LINES:]  # fmt: skip
            if lines:
                report.sections.append((f"service log: {out.stem}", "\n".join(lines)))
    return report


@pytest.fixture(autouse=True)
def _system_back_after_kills(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that kills or restarts a server of the shared stack (Redis, say) leaves
    the session's system ready again for the next test: its gateways subscribed to
    their channels again, its services answering. One that did not (a Redis restart
    three seconds before the next test) left that test's sockets on a pod that was
    not yet back on its channel: what was routed to them meanwhile came only with
    the next sync."""
    yield
    if request.node.get_closest_marker("kills_servers") is not None:
        for sysm in STARTED:
            sysm.wait_ready()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("stack"))
    yield s
    if s.procs is not None:
        s.procs.stop_all()


@pytest.fixture
def settings(stack: Stack) -> Settings:
    return stack.settings()


@pytest.fixture(scope="session")
def system(stack: Stack) -> Iterator[System]:
    sysm = start_system(stack)
    yield sysm
    sysm.procs.stop_all()


ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """Serve an aiohttp app on a real loopback port and hand back a client for it."""
    clients: list[TestClient[web.Request, web.Application]] = []

    async def make(app: web.Application) -> TestClient[web.Request, web.Application]:
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def issuer(settings: Settings) -> AsyncIterator[TokenIssuer]:
    """Signs test tokens and serves their JWKS; use ``issuer.settings`` for the app."""
    iss = TokenIssuer(settings)
    url = await iss.start()
    iss.settings = settings.model_copy(update={"auth_url": url, "keys_url": url})
    yield iss
    await iss.close()


# -- leak hunting (PARLEY_LEAK_HUNT=<file>) ------------------------------------------------
# A socket or file left unclosed raises its ResourceWarning when the garbage collector
# finds it, in whatever test runs then. With PARLEY_LEAK_HUNT set, each test is followed
# by a collection and every ResourceWarning is written to that file under the test that
# just ran; with PARLEY_LEAK_TRACE=<frames> too, with where the object was made
# (tracemalloc, in the test process only: many times slower, for a few files).
_LEAKS = os.environ.get("PARLEY_LEAK_HUNT")
if _LEAKS and os.environ.get("PARLEY_LEAK_TRACE"):
    tracemalloc.start(int(os.environ["PARLEY_LEAK_TRACE"]))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, None, None]:
    yield
    if not _LEAKS:
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    found = [w for w in caught if issubclass(w.category, ResourceWarning)]
    if not found:
        return
    with open(_LEAKS, "a") as out:
        for w in found:
            out.write(f"{item.nodeid}: {w.message}\n")
            made = tracemalloc.get_object_traceback(w.source) if w.source is not None else None
            if made is not None:
                out.write("".join(f"    {line}\n" for line in made.format()))
