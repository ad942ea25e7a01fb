"""HTTP routes of the auth service."""

from services.common.openapi import Api

api = Api("Parley auth", "0.1.0", "Accounts, sessions, tokens and two-factor authentication.")
