"""The auth service: accounts, sessions, tokens, two-factor, admin users API."""
