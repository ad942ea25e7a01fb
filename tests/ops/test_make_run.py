"""`make run` runs Prometheus beside the stack and prints its URL."""

from __future__ import annotations

from pathlib import Path

from scripts.run import PROCESSES, supervisord_conf
from scripts.stack import StackConfig, command


def test_prometheus_is_a_supervised_process_started_last(tmp_path: Path) -> None:
    order = dict(PROCESSES)
    assert order["prometheus"] > order["haproxy"] > max(order[s] for s in ("auth", "delivery"))
    conf = supervisord_conf(StackConfig(data_dir=tmp_path), "/usr/bin/python3")
    assert "[program:prometheus]" in conf
    assert "-m scripts.stack exec prometheus" in conf


def test_its_command_writes_the_config_and_listens_on_the_port(tmp_path: Path) -> None:
    cfg = StackConfig(data_dir=tmp_path, prometheus_port=19999)
    argv, _ = command(cfg, "prometheus")
    assert argv[0].endswith("prometheus")
    assert "--web.listen-address=127.0.0.1:19999" in argv
    conf = tmp_path / "prometheus" / "prometheus.yml"
    assert f"--config.file={conf}" in argv
    text = conf.read_text()
    for port in (cfg.auth_port, cfg.gateway1_port, cfg.gateway2_port, cfg.stats_port):
        assert f"127.0.0.1:{port}" in text


def test_a_stale_mongo_pid_file_is_removed_before_it_starts(tmp_path: Path) -> None:
    """Audit finding: a pid file left by a kill -9 (or a stopped container) may name a
    live process after a restart; nx-27017 then refused to start, every retry."""
    import os

    cfg = StackConfig(data_dir=tmp_path)
    (tmp_path / "mongo.pid").write_text(str(os.getpid()))  # a live process
    argv, _ = command(cfg, "mongo")
    assert str(tmp_path / "mongo.pid") in argv
    assert not (tmp_path / "mongo.pid").exists()


def test_a_running_stack_is_told_from_a_stale_socket(tmp_path: Path) -> None:
    import socket

    from scripts.run import running

    sock = tmp_path / "supervisor.sock"
    assert not running(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(sock))
        server.listen()
        assert running(sock)
    assert sock.exists() and not running(sock)  # left by a process killed: not running
