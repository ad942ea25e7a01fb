"""`make run` behaves like a deployment under a supervisor (issue #10).

The README's command runs for real here (in a pseudo-terminal, on free
ports): every process of the stack is killed with SIGKILL, in rounds of two
or three unrelated processes killed at the same moment (:data:`ROUNDS`: each
process once), while two users chat through HAProxy; each comes back on its
own, the others keep running, the clients recover, and every accepted message
arrives exactly once. Then Ctrl-C stops everything quietly with exit status 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pexpect
import pytest

from scripts.run import PROCESSES
from scripts.stack import ROOT, StackConfig
from tests.support.aio import eventually
from tests.support.chat import Receiver, Sender, assert_exactly_once_in_order
from tests.support.stack import http_status
from tests.support.users import signup

# Every process of `make run` (Prometheus included) is killed and awaited, six rounds
# while 500 messages go out at 10/s: minutes on a busy machine, not the default 120 s.
pytestmark = pytest.mark.timeout(600)

READY = ("/auth/readyz", "/keys/readyz", "/gateway/readyz", "/delivery/readyz", "/rooms/readyz")
# Who dies together: a store and a service or two per round, so that each round
# is a real failure (two things down at once) and the run takes six rounds
# instead of fourteen.
ROUNDS = (
    ("mongo", "smtp", "web"),
    ("kafka", "prometheus"),
    ("redis", "notifier"),
    ("auth", "gateway1"),
    ("keys", "gateway2", "rooms"),
    ("delivery", "haproxy"),
)


@dataclass
class RunStack:
    cfg: StackConfig
    child: pexpect.spawn
    output: Path

    @property
    def lb(self) -> str:
        return self.cfg.url("lb")

    @property
    def ws_url(self) -> str:
        return self.lb.replace("http://", "ws://") + "/ws"

    def ctl(self, *args: str) -> str:
        conf = self.cfg.data_dir / "supervisord.conf"
        out = subprocess.run(
            [str(Path(sys.executable).parent / "supervisorctl"), "-c", str(conf), *args],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return out.stdout

    def pid(self, name: str) -> int:
        text = self.ctl("pid", name).strip()
        return int(text) if text.isdigit() else 0

    def ready(self) -> bool:
        return all(http_status(self.cfg.url("ops") + path) == 200 for path in READY)


def start_make_run(cfg: StackConfig) -> RunStack:
    """``make run`` in a pseudo-terminal on ``cfg``'s ports, once it says it is up."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    env.update({f"PARLEY_{name.upper()}": str(getattr(cfg, name))
                for name in cfg.__dataclass_fields__ if name.endswith("_port")})  # fmt: skip
    env.update(
        {
            "PARLEY_DATA_DIR": str(cfg.data_dir),
            "PARLEY_KAFKA_SESSION_TIMEOUT_MS": "3000",
            "PARLEY_PRESENCE_REFRESH_S": "2",
            "PARLEY_ARGON2_TIME_COST": "1",
            "PARLEY_ARGON2_MEMORY_KIB": "1024",
            "PARLEY_ARGON2_PARALLELISM": "1",
        }
    )
    output = cfg.data_dir / "make-run.out"
    child = pexpect.spawn(
        "make", ["run"], cwd=str(ROOT), env=env, encoding="utf-8", timeout=180,
        # As under a terminal: a hangup ends make (under nohup, as CI may run, it would
        # be ignored from here on, and the terminal's hangup never reach the wrapper).
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL),
    )  # fmt: skip
    child.logfile_read = output.open("w")
    child.expect("Parley is up", timeout=180)
    return RunStack(cfg, child, output)


def stop_make_run(stack: RunStack) -> None:
    if stack.child.isalive():
        stack.child.sendintr()
        stack.child.expect(pexpect.EOF, timeout=90)
    assert stack.child.logfile_read is not None
    stack.child.logfile_read.close()


@pytest.fixture(scope="module")
def run_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunStack]:
    stack = start_make_run(StackConfig.free_ports(tmp_path_factory.mktemp("makerun")))
    try:
        yield stack
    finally:
        stop_make_run(stack)


@pytest.mark.timeout(900)
async def test_every_process_killed_comes_back_and_nothing_is_lost(
    run_stack: RunStack,
) -> None:
    alice, bob = await signup(run_stack.lb), await signup(run_stack.lb)
    receiver = Receiver(run_stack, bob)  # type: ignore[arg-type]
    await receiver.sync()
    sender = Sender(run_stack, alice, bob.user_id, "sup")  # type: ignore[arg-type]
    n = 500
    sending = asyncio.create_task(sender.run(n, pace=0.1))
    names = [name for name, _ in PROCESSES]
    assert sorted(sum(ROUNDS, ())) == sorted(names)  # each process once
    try:
        for killed in ROUNDS:
            before = {other: run_stack.pid(other) for other in names}
            assert all(before[name] > 0 for name in killed), run_stack.ctl("status")
            for name in killed:
                os.kill(before[name], 9)
            # Each comes back under a new pid; nothing else was restarted.
            for name in killed:
                await eventually(
                    lambda name=name: asyncio.to_thread(run_stack.pid, name),
                    lambda pid, old=before[name]: pid not in (0, old),
                    timeout=60,
                )
            await eventually(lambda: asyncio.to_thread(run_stack.ready), bool, timeout=90)
            after = {other: run_stack.pid(other) for other in names if other not in killed}
            assert after == {k: v for k, v in before.items() if k not in killed}
        await asyncio.wait_for(sending, 300)
        await receiver.listen_until(n, timeout=180)
    finally:
        sending.cancel()
        await sender.close()
        await receiver.close()
    assert len(sender.accepted) == n
    assert_exactly_once_in_order(receiver.bodies, "sup", n)


def test_ctrl_c_stops_everything_quietly_with_status_0(run_stack: RunStack) -> None:
    pids = [run_stack.pid(name) for name, _ in PROCESSES]
    assert all(pids)
    run_stack.child.sendintr()
    run_stack.child.expect(pexpect.EOF, timeout=90)
    run_stack.child.close()
    assert run_stack.child.exitstatus == 0, run_stack.child.signalstatus
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"process {pid} outlived the stack"
    text = run_stack.output.read_text()
    assert "Traceback" not in text
    assert "Error" not in text.split("stopping every process")[-1]


def test_a_terminal_that_goes_away_stops_everything(tmp_path: Path) -> None:
    """Audit finding: the terminal's hangup (an SSH session lost) killed the wrapper and
    reached supervisord in the same process group, which took it for "reload": every
    process restarted and ran on with nobody to stop it, and a second ``make run``
    replaced supervisorctl's password, so it could not be stopped either."""
    stack = start_make_run(StackConfig.free_ports(tmp_path))
    pids = [stack.pid(name) for name, _ in PROCESSES]
    try:
        assert all(pids)
        second = subprocess.run(
            ["make", "run"], cwd=str(ROOT), capture_output=True, text=True, timeout=60,
            env={**os.environ, "PARLEY_DATA_DIR": str(stack.cfg.data_dir)}, check=False,
        )  # fmt: skip
        assert "already running" in second.stdout, second.stdout + second.stderr
        assert stack.pid("auth") == pids[[n for n, _ in PROCESSES].index("auth")]  # usable
        log, stack.child.logfile_read = stack.child.logfile_read, None
        assert log is not None
        log.close()
        with contextlib.suppress(pexpect.ExceptionPexpect):
            stack.child.close(force=False)  # the terminal goes away: SIGHUP

        def gone() -> bool:
            return not any(Path(f"/proc/{pid}").exists() for pid in pids)

        deadline = time.monotonic() + 90
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.2)
        log_tail = (stack.cfg.data_dir / "log" / "supervisord.log").read_text()[-3000:]
        assert gone(), ([pid for pid in pids if Path(f"/proc/{pid}").exists()], log_tail)
    finally:
        stack.ctl("shutdown")  # whatever is left (nothing, once it passes)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
