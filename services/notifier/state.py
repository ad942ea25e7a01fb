"""The notifier's shared object and its app key, built once by ``create_app``."""

from __future__ import annotations

from aiohttp import web

from services.notifier.worker import Notifier

NOTIFIER: web.AppKey[Notifier] = web.AppKey("notifier", Notifier)
