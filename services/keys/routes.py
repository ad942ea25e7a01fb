"""HTTP routes of the key directory."""

from services.common.openapi import Api

api = Api("Parley keys", "0.1.0", "Identity keys and prekey bundles.")
