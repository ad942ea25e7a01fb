"""HTTP routes of the delivery service (inbox sync for gateways)."""

from services.common.openapi import Api

api = Api("Parley delivery", "0.1.0", "Inbox storage and sync.")
