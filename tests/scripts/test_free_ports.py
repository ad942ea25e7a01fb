"""Test stacks' ports stay out of the range outgoing connections take theirs from."""

from __future__ import annotations

import socket

from scripts.stack import _ephemeral_floor, _free_ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    first, second = _free_ports(20), _free_ports(20)
    ports = first + second
    assert len(set(ports)) == 40  # never handed out twice, even across calls
    assert all(10_000 <= p < _ephemeral_floor() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))
