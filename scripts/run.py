"""``make run``: every process of the embedded stack under supervisord.

supervisord (PyPI ``supervisor``) runs each process of :data:`PROCESSES` as
``python -m scripts.stack exec NAME`` and restarts any that exits, with a
growing back-off, while the others keep running: a crashed gateway or broker
comes back on its own, as under a real supervisor. Each process logs to
``<data dir>/log/NAME.log``; the terminal shows supervisord's own lines
(spawned, exited, restarted) and the banner.

This wrapper writes ``<data dir>/supervisord.conf``, starts supervisord, waits
until every service's ``/readyz`` answers 200 *through HAProxy* (its internal
operators' port: ``/readyz`` is not served publicly), prints the
URLs, and stops everything (exit 0) on:

- Ctrl-C: the wrapper runs in its own process group, made the terminal's
  foreground group, so ``make`` does not see the Ctrl-C and ends with 0
  instead of reporting an interrupt (supervisord runs in a group of its own:
  the terminal's signals reach the wrapper only, which stops it);
- SIGINT, SIGTERM or SIGHUP (the terminal closed) to this process;
- SIGTERM or SIGINT to the ``make run`` process alone (make forwards
  SIGTERM to its child but not SIGINT; the wrapper notices that its parent
  has handled a fatal signal and stops the stack).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from scripts.stack import MONITORING, PYTHONPATH, ROOT, SERVERS, SERVICES, StackConfig

CHECKS = (
    "/auth/readyz", "/keys/readyz", "/gateway/readyz", "/delivery/readyz", "/web/readyz",
    "/rooms/readyz",
)  # fmt: skip
# Start order (supervisord priority): servers, services, the load balancer,
# then Prometheus, which scrapes them all.
PROCESSES = (
    *((name, 10) for name in SERVERS),
    *((name, 20) for name in SERVICES),
    ("haproxy", 30),
    *((name, 40) for name in MONITORING),
)
# supervisord: a process that dies within STARTSECS of starting is retried
# after 1, 2, 3, ... s, STARTRETRIES times, then marked FATAL; one that ran
# longer is restarted at once.
STARTSECS = 2
STARTRETRIES = 30

# SIGHUP too: a terminal (an SSH session) that goes away stops the stack; supervisord,
# in a process group of its own, never sees it (it would take it for "reload", restart
# every process and run on with nobody to stop it).
FATAL_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def supervisord_conf(cfg: StackConfig, python: str) -> str:
    log_dir = cfg.data_dir / "log"
    # supervisorctl's password for this run only (the file is private to the user).
    password = secrets.token_urlsafe(18)
    lines = [
        "; Written by scripts/run.py at every `make run`; edits are overwritten.",
        "[supervisord]",
        "nodaemon=true",
        # Nothing to the terminal: the wrapper prints the log's new lines (Relay).
        "silent=true",
        f"logfile={cfg.data_dir / 'log' / 'supervisord.log'}",
        "logfile_maxbytes=20MB",
        "loglevel=info",
        # As root (containers, CI) say so, or supervisord warns at every start.
        *(["user=root"] if os.geteuid() == 0 else []),
        f"pidfile={cfg.data_dir / 'supervisord.pid'}",
        f"childlogdir={log_dir}",
        "",
        "[unix_http_server]",
        f"file={cfg.data_dir / 'supervisor.sock'}",
        "chmod=0700",
        "username=parley",
        f"password={password}",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{cfg.data_dir / 'supervisor.sock'}",
        "username=parley",
        f"password={password}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
    ]
    for name, priority in PROCESSES:
        lines += [
            "",
            f"[program:{name}]",
            f"command={python} -m scripts.stack exec {name}",
            f"directory={ROOT}",
            f"priority={priority}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={STARTSECS}",
            f"startretries={STARTRETRIES}",
            "stopsignal=TERM",
            "stopwaitsecs=15",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={log_dir / (name + '.log')}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=3",
        ]
    return "\n".join(lines) + "\n"


def ready(base: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(base + path, timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def parent_was_signalled(ppid: int, caught_at_start: int) -> bool:
    """True once the parent (``make``) has run a handler for SIGINT or SIGTERM.

    GNU make resets a fatal signal to its default action inside its handler,
    so the signal leaves the parent's caught-signal mask (``SigCgt`` in
    /proc). Also true when the parent is gone.
    """
    try:
        status = Path(f"/proc/{ppid}/status").read_text()
    except OSError:
        return True
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            caught = int(line.split()[1], 16)
            return bool(caught_at_start & ~caught)
    return False


def caught_fatal_signals(pid: int) -> int:
    """The parent's caught-signal bits among SIGINT/SIGTERM (0 if unreadable)."""
    mask = sum(1 << (int(s) - 1) for s in FATAL_SIGNALS)
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return int(line.split()[1], 16) & mask
    except OSError:
        pass
    return 0


def say(line: str) -> None:
    """Print to the terminal, if there is still one (not after a hangup; a signal
    handler's line during another print raises RuntimeError: reentrant call)."""
    with contextlib.suppress(OSError, ValueError, RuntimeError):
        print(line, flush=True)


class Relay:
    """Print the lines supervisord adds to its log from now on (``tail -f``), in a thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def finish(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        rest = ""
        while True:
            last = self.done.is_set()
            with contextlib.suppress(OSError):
                with self.path.open(errors="replace") as log:
                    if log.seek(0, os.SEEK_END) < self.offset:
                        self.offset = 0  # rotated
                    log.seek(self.offset)
                    text = log.read()
                    self.offset = log.tell()
                *lines, rest = (rest + text).split("\n")
                for line in lines:
                    say(line)
            if last:
                return
            self.done.wait(0.2)


def running(sock: Path) -> bool:
    """Whether a supervisord answers on ``sock`` (a stale file from a kill does not)."""
    if not sock.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(sock))
        except OSError:
            return False
    return True


class Terminal:
    """Make this process group the terminal's foreground group, and give it back."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.previous: int | None = None

    def take(self) -> None:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        if not sys.stdin.isatty():
            return
        try:
            fd = sys.stdin.fileno()
            previous = os.tcgetpgrp(fd)
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(fd, os.getpgrp())
            finally:
                signal.signal(signal.SIGTTOU, old)
            self.fd, self.previous = fd, previous
        except OSError:
            pass

    def give_back(self) -> None:
        if self.fd is None or self.previous is None:
            return
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(self.fd, self.previous)
        finally:
            signal.signal(signal.SIGTTOU, old)


def banner(cfg: StackConfig, conf: Path) -> None:
    """Where everything is (through :func:`say`: a closed pipe or a hung-up terminal
    raised out of the wrapper, and supervisord ran on with nobody to stop it)."""
    base, ops = cfg.url("lb"), cfg.url("ops")
    bin_dir = os.path.dirname(sys.executable)
    say("\n" + "=" * 64)
    say(f"Parley is up. Load balancer: {base}")
    say(f"  WebSocket:   ws://{cfg.host}:{cfg.lb_port}/ws")
    for svc in ("auth", "keys", "gateway", "delivery", "rooms"):
        say(f"  {svc:9} {base}/{svc}/docs  (readyz: {ops}/{svc}/readyz)")
    say(f"  Web client:  {base}/  (end-to-end-encrypted chat in the browser)")
    say(f"  Admin console: {base}/admin/  (sign-in: {base}/auth/login)")
    say(f"  HAProxy stats: {ops}/stats  (internal: also every /readyz and /metrics)")
    say(f"  Prometheus:  {cfg.url('prometheus')}  (alerts: {cfg.url('prometheus')}/alerts)")
    say(f"  Notifier:    {cfg.url('notifier')}/notifier/readyz  (mention e-mail digests)")
    say(f"  Mail sink:   {cfg.data_dir / 'mail'}")
    say(f"  Logs:        {cfg.data_dir / 'log'}/<process>.log")
    say(f"  Processes:   {bin_dir}/supervisorctl -c {conf} status")
    say("A process that dies is restarted. Ctrl-C stops everything.")
    say("=" * 64 + "\n")


def main() -> int:
    cfg = StackConfig.from_env()
    cfg = replace(cfg, data_dir=cfg.data_dir.resolve())
    (cfg.data_dir / "log").mkdir(parents=True, exist_ok=True)
    bin_dir = os.path.dirname(sys.executable)
    conf = cfg.data_dir / "supervisord.conf"
    if running(cfg.data_dir / "supervisor.sock"):
        # Its configuration (and supervisorctl's password in it) must not be replaced.
        print(f"parley: already running on {cfg.data_dir} (supervisorctl -c {conf} ...); "
              "stop it first.", flush=True)  # fmt: skip
        return 1
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(supervisord_conf(cfg, sys.executable))
    env = {
        **os.environ,
        "PYTHONPATH": PYTHONPATH,
        "PYTHONUNBUFFERED": "1",
        "PARLEY_DATA_DIR": str(cfg.data_dir),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    ppid = os.getppid()
    watched = caught_fatal_signals(ppid)
    terminal = Terminal()
    terminal.take()
    supervisor: subprocess.Popen[bytes] | None = None
    stopping = False

    def stop(_sig: int = 0, _frame: object = None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        if supervisor is not None and supervisor.poll() is None:
            # The signal first: after a hangup the terminal is gone, and printing to it
            # raises (the wrapper died there, and supervisord ran on with nobody to stop it).
            supervisor.send_signal(signal.SIGTERM)
            say("parley: stopping every process...")

    for sig in FATAL_SIGNALS:  # before supervisord starts: a Ctrl-C then stops it too
        signal.signal(sig, stop)
    log = cfg.data_dir / "log" / "supervisord.log"
    start_timeout = float(os.environ.get("PARLEY_START_TIMEOUT", "90"))  # before anything runs
    relay = Relay(log)
    # supervisord writes nothing to the terminal (``silent``): its lines reach it through
    # this wrapper, which follows its log. Written to a terminal that hung up, they failed
    # in supervisord itself, which died mid-stop and left its processes running; through
    # a pipe, the wrapper's death would have stopped it the same way.
    with (cfg.data_dir / "log" / "supervisord.stderr").open("w") as errors:
        supervisor = subprocess.Popen(
            [os.path.join(bin_dir, "supervisord"), "-c", str(conf)], env=env, cwd=ROOT,
            process_group=0,  # the terminal's signals reach this wrapper only, which stops it
            stdout=subprocess.DEVNULL, stderr=errors,
        )  # fmt: skip
    relay.start()
    try:
        if stopping:  # signalled while it started
            supervisor.send_signal(signal.SIGTERM)
        base = cfg.url("ops")  # HAProxy's internal port: /readyz is not public
        deadline = time.monotonic() + start_timeout
        pending = list(CHECKS)
        while pending and supervisor.poll() is None and not stopping:
            pending = [p for p in pending if not ready(base, p)]
            if pending and time.monotonic() > deadline:
                say(f"parley: not ready after timeout: {', '.join(pending)}")
                stop()
                supervisor.wait()
                relay.finish()
                return 1
            if pending:
                time.sleep(0.5)
        if supervisor.poll() is None and not stopping:
            banner(cfg, conf)
        while supervisor.poll() is None:
            if watched and not stopping and parent_was_signalled(ppid, watched):
                stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.wait(timeout=0.5)
        relay.finish()  # its last lines
        code = supervisor.returncode
        if code and not stopping:
            say((cfg.data_dir / "log" / "supervisord.stderr").read_text(errors="replace"))
        return 0 if stopping or code == 0 else code
    except BaseException:
        # Whatever ends the wrapper ends what it started: supervisord is in its own
        # process group, and would run on (with every process) with nobody to stop it.
        stop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            supervisor.wait(timeout=60)
        raise
    finally:
        terminal.give_back()


if __name__ == "__main__":
    sys.exit(main())
