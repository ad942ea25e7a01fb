"""A consumer-group member in a process of its own, so that a test can ``kill -9`` it.

python tests/embedded/member.py BOOTSTRAP TOPIC GROUP SESSION_TIMEOUT_MS
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer


async def main(bootstrap: str, topic: str, group: str, session_ms: int) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="member-process",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=max(session_ms // 4, 100),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    while True:
        await consumer.getmany(timeout_ms=200)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
