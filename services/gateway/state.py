"""A gateway pod's shared objects and their app keys, set by ``create_app``."""

from __future__ import annotations

from aiohttp import web

from services.gateway.hub import Hub

HUB: web.AppKey[Hub] = web.AppKey("hub", Hub)
