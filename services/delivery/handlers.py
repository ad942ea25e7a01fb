"""Inbox logic behind the HTTP routes: pages, acknowledgements and `delivered` receipts."""

from __future__ import annotations

from parley_contract import frames as f
from prometheus_client import CollectorRegistry, Counter, Histogram

from services.common.batching import GroupCommit
from services.common.errors import ApiError, ErrorCode
from services.common.inbox import receipts
from services.delivery.counters import CountersUnseeded
from services.delivery.store import DeliveryStore, item_frame


class Inbox:
    """Pages and acknowledgements of users' inboxes.

    Acks are group-committed: those that arrive while a flush is running are
    taken together by the next one (one Redis pipeline: per inbox one script
    that checks the number was issued, raises the watermark and takes the
    items out; then the receipts' routing and publish), so the store's work
    grows with the number of flushes, not of acks.
    """

    def __init__(self, store: DeliveryStore, registry: CollectorRegistry | None = None) -> None:
        self.store = store
        self.acked = Counter(
            "parley_delivery_acked_total", "Inbox items acknowledged (delivered) and deleted.",
            registry=registry or CollectorRegistry(),
        )  # fmt: skip
        self.batch_acks = Histogram(
            "parley_delivery_ack_batch_size", "Acks per POST /v1/inbox/acks (a gateway's batch).",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000),
            registry=registry or CollectorRegistry(),
        )  # fmt: skip
        self._acks: GroupCommit[str, int, int] = GroupCommit(self._flush)

    async def page(self, inbox: str, after: int, limit: int) -> f.InboxPage:
        try:
            docs, more = await self.store.page(inbox, after, limit)
        except CountersUnseeded as exc:
            # Another seeder holds the inbox's counter (stuck on MongoDB after a Redis
            # loss, or dead until its lock expires): a dependency away, asked again
            # later, not an `internal` error (a KeyError answered 500).
            raise ApiError(ErrorCode.UNAVAILABLE) from exc
        return f.InboxPage(messages=[item_frame(d) for d in docs], more=more)

    async def ack(self, user: str, seq: int) -> int:
        """Acknowledge up to ``seq`` in the device inbox ``user`` (an inbox id); returns how
        many of its items this flush acked.

        ``seq`` past the last number the inbox issued is refused
        (``seq_not_issued``) and changes nothing: acknowledging a number
        nobody has seen would delete items the client never received.
        """
        return await self._acks.submit(user, seq)

    async def _flush(self, batch: dict[str, list[int]]) -> dict[str, list[int | BaseException]]:
        """Each inbox up to its highest ack; an inbox where that is past the last number
        issued is left alone (``over``): its acks past that number are refused and
        the rest go again (a second round trip only then)."""
        targets = {user: max(seqs) for user, seqs in batch.items()}
        over: dict[str, int] = {}
        # Inboxes whose counter another seeder holds (after a Redis loss): nothing of
        # them acknowledged, their acks answered as their page would be.
        unseeded: set[str] = set()
        acked = await self.store.acknowledge_many(targets, over, unseeded)
        again = {
            user: top
            for user, issued in over.items()
            if (top := max((s for s in batch[user] if s <= issued), default=0))
        }
        if again:
            acked.update(await self.store.acknowledge_many(again, None, unseeded))
        self.acked.inc(sum(len(docs) for docs in acked.values()))
        await self.store.publish(receipts(d for docs in acked.values() for d in docs))
        return {
            user: [
                ApiError(ErrorCode.UNAVAILABLE)
                if user in unseeded
                else _not_issued(s)
                if user in over and s > over[user]
                else len(acked.get(user, []))
                for s in seqs
            ]
            for user, seqs in batch.items()
        }


def _not_issued(seq: int) -> ApiError:
    return ApiError(
        ErrorCode.SEQ_NOT_ISSUED,
        f"Sequence number {seq} was never issued to this inbox; nothing was acknowledged.",
    )
