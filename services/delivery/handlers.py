"""Inbox logic behind the HTTP routes: pages, acknowledgements and `delivered` receipts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from services.delivery.store import DeliveryStore, item_frame


class Inbox:
    def __init__(self, store: DeliveryStore) -> None:
        self.store = store

    async def page(self, user: str, after: int, limit: int) -> dict[str, Any]:
        docs, more = await self.store.page(user, after, limit)
        return {"messages": [item_frame(d) for d in docs], "more": more}

    async def ack(self, user: str, seq: int) -> int:
        acked = await self.store.acknowledge(user, seq)
        receipts = [
            (
                d["from"],
                {
                    "op": "delivered",
                    "id": d["client_id"],
                    "server_id": d["server_id"],
                    "to": user,
                    "conversation": d.get("conversation"),
                },
            )
            for d in acked
            if d.get("kind") == "message"
        ]
        await self.store.publish(receipts)
        return len(acked)


INBOX: web.AppKey[Inbox] = web.AppKey("inbox", Inbox)
