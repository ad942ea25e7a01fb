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
