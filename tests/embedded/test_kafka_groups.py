"""Consumer groups on the embedded broker: splitting partitions, rebalances, commits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.protocol.commit import OffsetCommitRequest
from aiokafka.protocol.group import (
    HeartbeatRequest,
    JoinGroupRequest,
    LeaveGroupRequest,
    SyncGroupRequest,
)

from tests.embedded.conftest import BrokerFactory
from tests.support.aio import eventually
from tests.support.kafka_broker import (
    ROOT,
    KafkaBroker,
    admin_client,
    consumer,
    create_topic,
    producer,
)

SESSION_MS = 2000
NONE, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID, REBALANCE_IN_PROGRESS = 0, 22, 25, 27
MEMBER_ID_REQUIRED = 79


async def describe(broker: KafkaBroker, group: str) -> tuple[str, dict[str, set[int]]]:
    """The group's state and each member's partitions, as the broker's coordinator sees them."""
    async with admin_client(broker.bootstrap) as admin:
        [resp] = await admin.describe_consumer_groups([group])
    _, _, state, _, _, members = resp.groups[0]
    owned: dict[str, set[int]] = {}
    for member_id, _, _, _, assignment in members:
        parts: set[int] = set()
        if assignment:
            for _, partitions in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                parts.update(partitions)
        owned[member_id] = parts
    return state, owned


def split(n_members: int, n_partitions: int) -> Any:
    """A predicate: Stable, that many members, each partition owned exactly once."""

    def ok(view: tuple[str, dict[str, set[int]]]) -> bool:
        state, owned = view
        every = [p for parts in owned.values() for p in parts]
        return (
            state == "Stable"
            and len(owned) == n_members
            and sorted(every) == list(range(n_partitions))
            and all(owned.values())
        )

    return ok


@asynccontextmanager
async def members(
    broker: KafkaBroker, topic: str, group: str, n: int
) -> AsyncIterator[list[AIOKafkaConsumer]]:
    """``n`` consumers of one group in this process, started together, each polling."""
    async with AsyncExitStack() as stack:
        cs = await asyncio.gather(
            *(
                stack.enter_async_context(
                    consumer(
                        broker.bootstrap,
                        topic,
                        group_id=group,
                        session_timeout_ms=SESSION_MS,
                        heartbeat_interval_ms=SESSION_MS // 4,
                    )
                )
                for _ in range(n)
            )
        )
        polls = [asyncio.create_task(_poll(c)) for c in cs]
        try:
            yield list(cs)
        finally:
            for t in polls:
                t.cancel()
            await asyncio.gather(*polls, return_exceptions=True)


async def _poll(c: AIOKafkaConsumer) -> None:
    while True:
        await c.getmany(timeout_ms=200)


def client_view(cs: list[AIOKafkaConsumer]) -> list[set[int]]:
    return [{tp.partition for tp in c.assignment()} for c in cs]


async def test_consumers_of_one_group_split_the_partitions_and_read_each_record_once(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 6)
    group = f"g-{topic}"
    seen: list[tuple[int, int]] = []

    async def read(c: AIOKafkaConsumer) -> None:
        while True:
            for tp, records in (await c.getmany(timeout_ms=200)).items():
                seen.extend((tp.partition, r.offset) for r in records)

    async with AsyncExitStack() as stack:
        cs = await asyncio.gather(
            *(
                stack.enter_async_context(
                    consumer(
                        broker.bootstrap,
                        topic,
                        group_id=group,
                        session_timeout_ms=SESSION_MS,
                        heartbeat_interval_ms=SESSION_MS // 4,
                    )
                )
                for _ in range(3)
            )
        )
        readers = [asyncio.create_task(read(c)) for c in cs]
        await eventually(lambda: describe(broker, group), split(3, 6))
        await eventually(
            _const(cs),
            lambda _: (
                sorted(p for s in client_view(cs) for p in s) == list(range(6))
                and all(client_view(cs))
            ),
        )
        async with producer(broker.bootstrap) as p:
            futures = [await p.send(topic, b"%d" % i, partition=i % 6) for i in range(600)]
            await asyncio.gather(*futures)
        await eventually(_const(seen), lambda s: len(s) >= 600)
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert sorted(seen) == sorted((i % 6, i // 6) for i in range(600))


def _const(value: Any) -> Any:
    async def probe() -> Any:
        return value

    return probe


async def test_a_member_that_leaves_hands_its_partitions_to_the_others(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 6)
    group = f"g-{topic}"
    async with members(broker, topic, group, 2) as stay:
        leaving = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            session_timeout_ms=SESSION_MS,
            heartbeat_interval_ms=SESSION_MS // 4,
        )
        await leaving.start()
        poll = asyncio.create_task(_poll(leaving))
        await eventually(lambda: describe(broker, group), split(3, 6))
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)
        await leaving.stop()  # LeaveGroup: the rebalance starts at once
        await eventually(lambda: describe(broker, group), split(2, 6))
        await eventually(
            _const(stay), lambda cs: sorted(p for s in client_view(cs) for p in s) == list(range(6))
        )


async def test_a_killed_member_in_another_process_is_dropped_after_its_session(
    broker: KafkaBroker, topic: str, tmp_path: Path
) -> None:
    await create_topic(broker.bootstrap, topic, 6)
    group = f"g-{topic}"
    other = start_member(broker, topic, group, tmp_path / "member.out")
    try:
        async with members(broker, topic, group, 2) as here:
            # Three members, two processes: the partitions are split among all three.
            await eventually(lambda: describe(broker, group), split(3, 6), timeout=30)
            async with admin_client(broker.bootstrap) as admin:
                [resp] = await admin.describe_consumer_groups([group])
            clients = {m[0]: m[1] for m in resp.groups[0][5]}
            assert sorted(clients.values()).count("member-process") == 1
            other.send_signal(signal.SIGKILL)
            other.wait(timeout=10)
            await eventually(lambda: describe(broker, group), split(2, 6), timeout=30)
            await eventually(
                _const(here),
                lambda cs: sorted(p for s in client_view(cs) for p in s) == list(range(6)),
            )
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


def start_member(broker: KafkaBroker, topic: str, group: str, out: Path) -> subprocess.Popen[bytes]:
    """A member of ``group`` in a process of its own (tests/embedded/member.py)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = Path(__file__).with_name("member.py")
    argv = [sys.executable, str(script), broker.bootstrap, topic, group, str(SESSION_MS)]
    with open(out, "wb") as log:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log)


# The protocol itself, request by request -------------------------------------------------
class RawMember:
    """One group member speaking JoinGroup/SyncGroup/Heartbeat itself, on its own connection."""

    def __init__(self, broker: KafkaBroker, group: str) -> None:
        self.client = AIOKafkaClient(bootstrap_servers=broker.bootstrap, client_id="raw")
        self.group = group
        self.member_id = ""
        self.generation = -1

    async def start(self) -> None:
        await self.client.bootstrap()

    async def send(self, request: Any) -> Any:
        return await self.client.send(0, request)

    async def join(self) -> Any:
        while True:
            resp = await self.send(
                JoinGroupRequest(
                    self.group,
                    SESSION_MS * 5,
                    10_000,
                    self.member_id,
                    None,
                    "consumer",
                    [("range", b"meta-" + self.member_id.encode())],
                )
            )
            self.member_id = resp.member_id
            if resp.error_code != MEMBER_ID_REQUIRED:
                self.generation = resp.generation_id
                return resp

    async def sync(self, assignments: list[tuple[str, bytes]]) -> Any:
        return await self.send(
            SyncGroupRequest(self.group, self.generation, self.member_id, None, assignments)
        )

    async def heartbeat(self) -> int:
        resp = await self.send(HeartbeatRequest(self.group, self.generation, self.member_id))
        return int(resp.error_code)

    async def commit(self, topic: str, offset: int, generation: int, member_id: str) -> int:
        resp = await self.send(
            OffsetCommitRequest(self.group, generation, member_id, -1, [(topic, [(0, offset, "")])])
        )
        return int(resp.topics[0][1][0][1])

    async def close(self) -> None:
        await self.client.close()


async def test_generations_heartbeats_and_commits_follow_the_classic_protocol(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 1)
    group = f"g-{topic}"
    a, b = RawMember(broker, group), RawMember(broker, group)
    await a.start()
    await b.start()
    try:
        joined = await a.join()
        assert (joined.error_code, joined.generation_id, joined.leader_id) == (0, 1, a.member_id)
        assert [m[0] for m in joined.members] == [a.member_id]  # the leader sees the members
        assert (await a.sync([(a.member_id, b"for-a")])).member_assignment == b"for-a"
        assert await a.heartbeat() == NONE
        assert await a.commit(topic, 5, 1, a.member_id) == NONE
        assert await a.commit(topic, 5, 0, a.member_id) == ILLEGAL_GENERATION
        assert await a.commit(topic, 5, 1, "someone-else") == UNKNOWN_MEMBER_ID
        assert await a.commit(topic, 5, -1, "") == UNKNOWN_MEMBER_ID  # the group is not empty

        # b joins: a's heartbeat says rebalance; the join completes once a rejoins.
        b_join = asyncio.create_task(b.join())
        assert await eventually(a.heartbeat, lambda e: e == REBALANCE_IN_PROGRESS) == 27
        a_join = await a.join()
        b_joined = await b_join
        assert a_join.generation_id == b_joined.generation_id == 2
        assert a_join.leader_id == a.member_id and b_joined.leader_id == a.member_id
        assert sorted(m[0] for m in a_join.members) == sorted([a.member_id, b.member_id])
        assert b_joined.members == []  # only the leader gets the metadata
        b_sync = asyncio.create_task(b.sync([]))
        await a.sync([(a.member_id, b"A2"), (b.member_id, b"B2")])
        assert (await b_sync).member_assignment == b"B2"

        # A commit from the previous generation is refused; the current one is taken.
        assert await a.commit(topic, 6, 1, a.member_id) == ILLEGAL_GENERATION
        assert await b.commit(topic, 7, 2, b.member_id) == NONE
        assert await a.heartbeat() == NONE

        # b leaves: a is told to rejoin at once, and alone makes generation 3.
        leave = await b.send(LeaveGroupRequest(group, b.member_id))
        assert leave.error_code == NONE
        assert await a.heartbeat() == REBALANCE_IN_PROGRESS
        again = await a.join()
        assert (again.generation_id, [m[0] for m in again.members]) == (3, [a.member_id])
        assert await b.heartbeat() == UNKNOWN_MEMBER_ID
    finally:
        await a.close()
        await b.close()
    async with admin_client(broker.bootstrap) as admin:
        offsets = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(topic, 0)]
        )
    assert offsets[TopicPartition(topic, 0)].offset == 7


async def test_list_consumer_group_offsets_with_and_without_partitions(
    broker: KafkaBroker, topic: str
) -> None:
    await create_topic(broker.bootstrap, topic, 3)
    group = f"g-{topic}"
    tps = [TopicPartition(topic, p) for p in range(3)]
    async with producer(broker.bootstrap) as p:
        for i in range(9):
            await p.send_and_wait(topic, b"x", partition=i % 3)
    # A consumer without group management commits with generation -1: a simple commit.
    async with consumer(broker.bootstrap, group_id=group) as c:
        c.assign(tps)
        await c.commit({tps[0]: 1, tps[2]: 3})
    async with admin_client(broker.bootstrap) as admin:
        explicit = await admin.list_consumer_group_offsets(group, partitions=tps)
        assert {tp: o.offset for tp, o in explicit.items()} == {tps[0]: 1, tps[1]: -1, tps[2]: 3}
        every = await admin.list_consumer_group_offsets(group)
        assert {tp: o.offset for tp, o in every.items()} == {tps[0]: 1, tps[2]: 3}
        assert (group, "") in await admin.list_consumer_groups()


async def test_consumers_started_together_land_in_one_generation(
    make_broker: BrokerFactory, topic: str
) -> None:
    # The initial delay waits for members that keep arriving; a generous one keeps a
    # slow machine from splitting their start into two generations.
    broker = make_broker("--group-initial-rebalance-delay-ms", "3000")
    n = 3
    await create_topic(broker.bootstrap, topic, 6)
    group = f"g-{topic}"
    joins = 0

    class Count:
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, assigned: Any) -> None:
            nonlocal joins
            joins += 1

    from aiokafka.abc import ConsumerRebalanceListener

    class Listener(Count, ConsumerRebalanceListener):
        pass

    # A long session: on a busy machine a missed heartbeat would expel a member and
    # make it join again, which is not what this test is about.
    cs = [
        AIOKafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            session_timeout_ms=30_000,
            heartbeat_interval_ms=1_000,
        )
        for _ in range(n)
    ]
    for c in cs:
        c.subscribe([topic], listener=Listener())
    await asyncio.gather(*(c.start() for c in cs))
    polls = [asyncio.create_task(_poll(c)) for c in cs]
    try:
        await eventually(lambda: describe(broker, group), split(n, 6))
        await eventually(
            _const(cs), lambda cs: sorted(p for s in client_view(cs) for p in s) == list(range(6))
        )
        # The initial rebalance delay gathered them: each got one assignment, no second round.
        assert joins == n
    finally:
        for t in polls:
            t.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.gather(*(c.stop() for c in cs))


async def test_refused_joins_create_no_group_and_an_empty_group_without_offsets_goes(
    tmp_path: Path,
) -> None:
    """JoinGroup created the group before checking the request, and no group was ever
    freed: a client trying random group ids grew the broker's memory without bound."""
    from aiokafka.protocol.admin import DescribeGroupsRequest_v0
    from aiokafka.protocol.commit import OffsetCommitRequest_v2
    from aiokafka.protocol.group import (
        JoinGroupRequest_v2,
        JoinGroupRequest_v5,
        LeaveGroupRequest_v0,
        SyncGroupRequest_v0,
    )

    from tests.embedded.inproc import ask, running

    inconsistent_protocol = 23
    meta = [("range", b"")]
    async with running(
        tmp_path, group_initial_rebalance_delay_ms=0, group_min_session_timeout_ms=50
    ) as broker:
        await broker.topics.create("t", 1)

        async def state(group: str) -> str:
            resp = await ask(broker, DescribeGroupsRequest_v0([group]))
            return str(resp.groups[0][2])

        for i in range(100):
            no_protocol = JoinGroupRequest_v2(f"g{i}", 6000, 6000, "", "consumer", [])
            assert (await ask(broker, no_protocol)).error_code == inconsistent_protocol
            stale = JoinGroupRequest_v2(f"h{i}", 6000, 6000, "gone-member", "consumer", meta)
            assert (await ask(broker, stale)).error_code == UNKNOWN_MEMBER_ID
        assert broker.groups.groups == {}
        assert await state("g0") == "Dead"

        # A member that joins and leaves: its group goes (it committed nothing).
        joined = await ask(broker, JoinGroupRequest_v2("solo", 6000, 6000, "", "consumer", meta))
        assert joined.error_code == NONE and "solo" in broker.groups.groups
        assert (
            await ask(broker, LeaveGroupRequest_v0("solo", joined.member_id))
        ).error_code == NONE
        assert "solo" not in broker.groups.groups

        # One that committed: the group stays (Empty) and its offsets are never lost.
        joined = await ask(broker, JoinGroupRequest_v2("kept", 6000, 6000, "", "consumer", meta))
        sync = SyncGroupRequest_v0("kept", joined.generation_id, joined.member_id, [])
        assert (await ask(broker, sync)).error_code == NONE
        commit = OffsetCommitRequest_v2(
            "kept", joined.generation_id, joined.member_id, -1, [("t", [(0, 42, "")])]
        )
        assert (await ask(broker, commit)).topics[0][1][0][1] == NONE
        assert (
            await ask(broker, LeaveGroupRequest_v0("kept", joined.member_id))
        ).error_code == NONE
        assert await state("kept") == "Empty"
        assert broker.offsets.get("kept", "t", 0) == (42, "")

        # Asked to rejoin with an id (KIP-394) and never back: gone after its session.
        pending = JoinGroupRequest_v5("later", 100, 100, "", None, "consumer", meta)
        assert (await ask(broker, pending)).error_code == MEMBER_ID_REQUIRED
        assert "later" in broker.groups.groups

        async def groups() -> set[str]:
            return set(broker.groups.groups)

        assert await eventually(groups, lambda g: "later" not in g) == {"kept"}
