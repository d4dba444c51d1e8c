"""What an API operation is (method, path, scope, models, handler) and the
helpers every handler uses to read a body or query and write a reply.

Its own room so that handler modules (``routes.py``, ``rollouts.py``,
``alerts.py``) can share it without importing one another.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from control.api.auth import Principal, Scope
from control.service import ControlPlane
from control.state import StateError, pydantic_problems

Handler = Callable[[web.Request, ControlPlane, Principal], Awaitable[web.StreamResponse]]
B = TypeVar("B", bound=BaseModel)


class BadRequest(Exception):
    """The request is not even JSON (400), as opposed to invalid JSON (422)."""


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    scope: Scope
    summary: str
    handler: Handler
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    statuses: tuple[int, ...] = ()  # answers besides 200 and the auth/validation ones


async def json_body(request: web.Request) -> object:
    try:
        text = await request.text()
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


async def parse_body(request: web.Request, model: type[B]) -> B:
    data = await json_body(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StateError(pydantic_problems(exc)) from None


def parse_query(request: web.Request, model: type[B]) -> B:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise StateError(pydantic_problems(exc, "query.")) from None


def reply(model: BaseModel, status: int = 200) -> web.Response:
    return web.json_response(model.model_dump(mode="json"), status=status)


def path_int(request: web.Request, name: str) -> int:
    text = request.match_info[name]
    if not text.isdigit() or len(text) > 18:
        raise StateError([(name, "expected a non-negative integer")])
    return int(text)
