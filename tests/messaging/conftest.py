"""Cross-service messaging flows (gateway, Kafka, delivery, keys events): two gateway pods and a delivery worker, in-process."""

from tests.support.messaging import Messaging, messaging
from tests.support.room_world import RoomWorld, world

__all__ = ["Messaging", "RoomWorld", "messaging", "world"]
