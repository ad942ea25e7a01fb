"""An admin's removal reads a room's kind and members from the rooms service's records
(services/delivery/parties.py ``RoomRecords``), against the real embedded MongoDB, at the
size a large room reaches: one ``_id`` range, every member once, no neighbour's."""

from __future__ import annotations

import secrets

import pytest

from services.common.clients import mongo_client, service_db
from services.common.config import Settings
from services.common.errors import ApiError
from services.delivery.parties import RoomRecords


async def test_a_room_of_fifteen_hundred_members_is_read_whole_and_alone(
    settings: Settings,
) -> None:
    mongo = mongo_client(settings)
    try:
        db = service_db(mongo, settings, "rooms")
        records = RoomRecords(db)
        room, before, after = (secrets.token_hex(12) for _ in range(3))
        # Neighbours on both sides of the room's id range, and a deleted room's members.
        members = [secrets.token_hex(16) for _ in range(1500)]
        docs = [{"_id": f"{room}|{u}", "room": room, "user": u} for u in members]
        for other in (before, after, room[:-1] + ("0" if room[-1] != "0" else "1")):
            docs += [{"_id": f"{other}|{secrets.token_hex(16)}", "room": other} for _ in range(50)]
        for d in docs:
            d.setdefault("user", d["_id"].split("|", 1)[1])
        await db["members"].insert_many(docs)
        await db["rooms"].insert_many([
            {"_id": room, "kind": "private", "deleted_at": 1},  # deleted: read all the same
        ])  # fmt: skip
        got = await records.member_ids(room)
        assert sorted(got) == sorted(members)
        assert await records.kind(room) == "private"
        with pytest.raises(ApiError) as exc:
            await records.kind(secrets.token_hex(12))
        assert exc.value.code.value == "room_not_found"
    finally:
        await mongo.close()
