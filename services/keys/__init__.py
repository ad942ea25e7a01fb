"""The key directory: identity keys and prekey bundles."""
