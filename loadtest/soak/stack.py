"""The stack exactly as ``make run`` starts it, and its supervisord."""

from __future__ import annotations

import configparser
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Mapping
from pathlib import Path

from scripts.stack import ROOT, StackConfig


class RunStack:
    """``python -m scripts.run`` (what ``make run`` runs) on free ports, and its supervisord."""

    def __init__(self, data_dir: Path, extra_env: Mapping[str, str]) -> None:
        self.cfg = StackConfig.free_ports(data_dir)
        self.extra_env = dict(extra_env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.output = data_dir / "make-run.out"
        self._rpc: xmlrpc.client.ServerProxy | None = None
        self._rpc_lock = threading.Lock()

    @property
    def lb(self) -> str:
        return self.cfg.url("lb")

    @property
    def ws_url(self) -> str:
        return self.lb.replace("http://", "ws://") + "/ws"

    def start(self, timeout: float = 240.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        ports = [n for n in self.cfg.__dataclass_fields__ if n.endswith("_port")]
        env.update({f"PARLEY_{n.upper()}": str(getattr(self.cfg, n)) for n in ports})
        env["PARLEY_DATA_DIR"] = str(self.cfg.data_dir)
        env["PARLEY_START_TIMEOUT"] = str(int(timeout))
        env.update(self.extra_env)
        with self.output.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "scripts.run"], cwd=ROOT, env=env,
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout + 30
        while "Parley is up" not in self.output.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.output.read_text(errors="replace")[-3000:]
                self.stop()
                raise RuntimeError(f"make run did not come up:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            # scripts/run.py leads its own process group: everything it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    def rpc(self) -> xmlrpc.client.ServerProxy:
        """supervisord's XML-RPC interface (what supervisorctl uses), on its unix socket."""
        if self._rpc is None:
            from supervisor.xmlrpc import SupervisorTransport

            conf = configparser.RawConfigParser()
            conf.read(self.cfg.data_dir / "supervisord.conf")
            ctl = conf["supervisorctl"]
            transport = SupervisorTransport(ctl["username"], ctl["password"], ctl["serverurl"])
            self._rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
        return self._rpc

    def pids(self) -> dict[str, int]:
        """The pid of every running program (0 while it is down)."""
        with self._rpc_lock:
            infos = self.rpc().supervisor.getAllProcessInfo()
        assert isinstance(infos, list)
        return {i["name"]: int(i["pid"]) if i["statename"] == "RUNNING" else 0 for i in infos}
