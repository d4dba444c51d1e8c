"""The agent's calls to the control plane: node registration, the assignments
long-poll, status reports, and the registry calls for the instances it runs.

Only HTTP here; what to do with the answers is ``agent.py``'s and ``runner.py``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout

from control.nodes import AgentReport, Assignment, NodeRegistration

CALL_TIMEOUT = ClientTimeout(total=10.0)


@dataclass(frozen=True)
class Adoption:
    """The control plane's word on the instances a registration carried."""

    adopted: frozenset[str]
    refused: dict[str, str]


class ChannelError(Exception):
    """The control plane could not be reached or refused a call."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Channel:
    def __init__(self, session: ClientSession, url: str, token: str) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.token = token

    async def _call(
        self,
        method: str,
        path: str,
        body: object = None,
        limit: ClientTimeout = CALL_TIMEOUT,
        ok: tuple[int, ...] = (200, 201),
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}"}
        try:
            async with self.session.request(
                method, self.url + path, json=body, headers=headers, timeout=limit
            ) as response:
                if response.status not in ok:
                    text = (await response.text())[:300]
                    raise ChannelError(
                        f"{method} {path}: {response.status} {text}", response.status
                    )
                if response.status in (200, 201):
                    return response.status, await response.json()
                return response.status, None
        except (ClientError, TimeoutError, ValueError) as exc:
            raise ChannelError(f"{method} {path}: {exc!r}") from None

    async def register_node(self, registration: NodeRegistration) -> Adoption | None:
        """Register; answers what became of the instances the registration carries,
        or None from a control plane that does not adopt (it is asked again without
        them if it refuses the field)."""
        body = registration.model_dump(mode="json")
        if not body["instances"]:
            del body["instances"]  # what every control plane accepts
        try:
            _, answer = await self._call("POST", "/v1/nodes", body)
        except ChannelError as exc:
            if exc.status != 422 or "instances" not in body:
                raise
            del body["instances"]
            _, answer = await self._call("POST", "/v1/nodes", body)
        if not isinstance(answer, dict) or not isinstance(answer.get("adopted"), list):
            return None
        refused = answer.get("refused")
        try:
            return Adoption(
                adopted=frozenset(str(i) for i in answer["adopted"]),
                refused={str(r["id"]): str(r["reason"]) for r in refused or []},
            )
        except (KeyError, TypeError) as exc:
            raise ChannelError(f"POST /v1/nodes: a malformed answer: {exc!r}") from None

    async def assignments(
        self, node: str, index: int | None, wait: float
    ) -> tuple[int, list[Assignment]] | None:
        """The node's assignments once they differ from ``index``; None on timeout."""
        path = f"/v1/agent/assignments?node={node}&wait={wait:g}s"
        if index is not None:
            path += f"&index={index}"
        status, body = await self._call(
            "GET", path, limit=ClientTimeout(total=wait + 10.0), ok=(200, 304)
        )
        if status == 304:
            return None
        try:
            return int(body["index"]), [Assignment.model_validate(i) for i in body["instances"]]
        except (KeyError, TypeError, ValueError) as exc:  # ValidationError is a ValueError
            raise ChannelError(f"GET {path}: a malformed answer: {exc}") from None

    async def report(self, report: AgentReport) -> None:
        await self._call("POST", "/v1/agent/status", report.model_dump(mode="json"))

    async def register_instance(self, spec: dict[str, object]) -> str:
        _, body = await self._call("POST", "/v1/instances", spec)
        return str(body["id"])

    async def heartbeat(self, instance: str) -> None:
        await self._call("PUT", f"/v1/instances/{instance}/heartbeat")

    async def deregister(self, instance: str) -> None:
        try:
            await self._call("DELETE", f"/v1/instances/{instance}")
        except ChannelError as exc:
            if exc.status != 404:  # already gone (TTL lapse, control-plane restart)
                raise
