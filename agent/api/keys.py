"""Typed aiohttp app keys shared by the API modules."""

from __future__ import annotations

from aiohttp import web

from agent.node import Node

NODE = web.AppKey("node", Node)
