"""Test stacks' ports stay out of the range outgoing connections take theirs from."""

from __future__ import annotations

import socket

import pytest

from scripts.stack import _ephemeral_floor, _free_ports, _worker_share


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    first, second = _free_ports(20), _free_ports(20)
    ports = first + second
    assert len(set(ports)) == 40  # never handed out twice, even across calls
    assert all(10_000 <= p < _ephemeral_floor() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))


def test_parallel_test_workers_pick_from_slices_that_do_not_overlap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    slices = []
    for i in range(3):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{i}")
        slices.append(_worker_share(10_000, 32_768))
        ports = _free_ports(30)
        assert all(slices[-1][0] <= p < slices[-1][1] for p in ports)
    assert slices == [(10_000, 17_589), (17_589, 25_178), (25_178, 32_767)]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert _worker_share(10_000, 32_768) == (10_000, 32_768)  # not under xdist: all of it
