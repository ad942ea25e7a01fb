"""The gateway's tests: two gateway pods and a delivery worker, in-process."""

from tests.support.messaging import Messaging, messaging

__all__ = ["Messaging", "messaging"]
