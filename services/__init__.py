"""Parley services."""
