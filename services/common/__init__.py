"""Shared building blocks for every Parley service."""
