"""``resync`` (docs/protocol.md): the pod lost frames it meant to push, and the client
pages through its inbox again from the last item it processed. Pushes read before
that sync ends must not move the cursor: one that did (a push right behind the
``resync`` frame, read before the resync's task ran) made the sync start after it,
so the item whose push was lost was never read, and the next cumulative ack
deleted it on the server.

A real client on a scripted gateway (tests/client/scripted.py): no server runs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from parley_contract import frames as f

from tests.client.scripted import Rig, probe, scripted_client
from tests.support.aio import eventually


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    async with scripted_client(tmp_path) as rig:
        yield rig


async def test_a_push_right_behind_a_resync_does_not_skip_the_lost_item(rig: Rig) -> None:
    gateway = rig.gateway
    rig.message(101, "hello 101 (its push was lost)")  # stored; the pod's channel was down
    m102 = rig.message(102, "hello 102")
    # The channel is back: the pod says resync, then routes the next message at once,
    # so both are in the read buffer before the resync's task runs.
    gateway.push(f.Resync(reason="routing_restored"))
    gateway.push(m102)
    await eventually(probe(rig.texts), lambda t: "hello 101 (its push was lost)" in t, 5)
    assert gateway.syncs == [100], "the resync read from the last item processed"
    assert sorted(rig.texts()) == ["hello 100", "hello 101 (its push was lost)", "hello 102"]
    await eventually(probe(rig.last_seq), lambda seq: seq == 102)

    # The resync is over: pushes move the cursor and are acknowledged again.
    gateway.push(rig.message(103, "hello 103"))
    await eventually(probe(rig.last_seq), lambda seq: seq == 103)
    await eventually(probe(lambda: gateway.acks[-1]), lambda seq: seq == 103)
    assert not gateway.inbox
    assert rig.texts()[-1] == "hello 103"


async def test_pushes_move_nothing_while_a_resync_runs_and_after_it_failed(rig: Rig) -> None:
    gateway = rig.gateway
    gateway.fail_syncs = True
    rig.message(101, "hello 101 (its push was lost)")
    m102 = rig.message(102, "hello 102")
    gateway.push(f.Resync(reason="routing_restored"))
    gateway.push(m102)
    # The resync's sync fails: the socket is given up (the next one syncs from 100).
    await eventually(probe(lambda: gateway.closed), bool)
    await eventually(probe(lambda: rig.client.messenger._syncing), lambda n: n == 0)
    assert gateway.syncs == [100]
    assert rig.last_seq() == 100
    assert gateway.acks == [100]
    assert 101 in gateway.inbox
