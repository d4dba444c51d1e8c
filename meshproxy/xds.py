"""The sidecar's control-plane client: long-poll a snapshot, apply it, ACK or NACK.

How it works (the protocol is the control plane's, see DESIGN section 4):

    GET  /v1/snapshot?node=ID&service=S&upstreams=a,b&index=V&wait=30s
         -> 200 {version, nonce, snapshot} | 304 (nothing new before ``wait``)
    POST /v1/ack {node, version, nonce, error?}     (an ``error`` is a NACK)

One task per worker (``SnapshotWatcher.run``) loops: send the ACK still owed,
poll, validate the snapshot whole with the pydantic models (a refusal names
the field path), hand it to ``apply`` (the runtime compiles it and swaps it in
atomically, or raises ``ConfigError``), save it to the cache, owe an ACK.
Errors (connection refused, timeouts, 5xx, a body that is not a delivery) back
off exponentially with full jitter, capped; a 304 polls again at once.

The last accepted snapshot is written atomically (temporary file, fsync,
rename) to ``cache_dir/<node>.json``.  While no snapshot is in force, any
failed round loads that file and applies it, so a sidecar started while the
control plane is down serves its last known good config; it keeps polling.
``in_force`` is set once a snapshot (from either source) has been applied:
the runtime keeps ``/ready`` false until then.

The decisions (backoff, what to poll with, what to ACK, what to cache) are
plain functions and ``WatchState``, tested without sockets or clocks.  This
module must not compile snapshots itself nor reach into the runtime: it only
calls ``apply``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from meshproxy.config import Bootstrap, ConfigError, Snapshot
from meshproxy.config.bootstrap import ControlPlane, Node

log = logging.getLogger("meshproxy.xds")

MAX_REASON = 4000  # the control plane takes at most 4096 characters of NACK reason
CACHE_FORMAT = 1
Apply = Callable[[Snapshot], None]


# -- sans-IO -------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, 2015):
    the n-th consecutive failure waits ``draw * min(cap, base * 2**(n-1))``.
    Full jitter spreads a fleet that lost its control plane at the same
    moment, so that its return is not met by every sidecar at once."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int, draw: float) -> float:
        if failures <= 0:
            return 0.0
        ceiling = min(self.cap, self.base * 2.0 ** min(failures - 1, 62))
        return draw * ceiling


@dataclass(frozen=True)
class Delivery:
    """A 200 answer to a poll.  ``snapshot`` is None when it did not validate;
    ``problem`` then says which field and why (the NACK reason)."""

    version: int
    nonce: str
    snapshot: Snapshot | None
    problem: str | None = None


class DeliveryError(Exception):
    """A body that is not a delivery at all: nothing to ACK, retried with backoff."""


@dataclass(frozen=True)
class Ack:
    version: int
    nonce: str
    error: str | None = None

    def body(self, node: str) -> dict[str, object]:
        body: dict[str, object] = {"node": node, "version": self.version, "nonce": self.nonce}
        if self.error is not None:
            body["error"] = self.error
        return body


def reason(problems: list[tuple[str, str]]) -> str:
    """One line naming every refused field, short enough for the ACK body."""
    text = "; ".join(f"{where}: {message}" for where, message in problems)
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def validation_problems(exc: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return [
        (".".join([prefix, *(str(part) for part in err["loc"])]), err["msg"])
        for err in exc.errors()
    ]


def parse_delivery(body: bytes) -> Delivery:
    """Read a 200 answer.  The envelope must hold (else ``DeliveryError``); the
    snapshot inside is validated whole and a refusal kept as ``problem``."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DeliveryError(f"the answer is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DeliveryError("the answer is not a JSON object")
    version, nonce, raw = data.get("version"), data.get("nonce"), data.get("snapshot")
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise DeliveryError("the answer has no valid 'version'")
    if not isinstance(nonce, str) or not nonce:
        raise DeliveryError("the answer has no valid 'nonce'")
    try:
        snapshot = Snapshot.model_validate(raw)
    except ValidationError as exc:
        return Delivery(version, nonce, None, reason(validation_problems(exc, "snapshot")))
    return Delivery(version, nonce, snapshot)


class WatchState:
    """What the watcher knows between rounds.

    ``index`` is the version last *received* (accepted or not), sent back on
    the next poll so that a refused snapshot is not delivered again at once;
    ``applied`` the version in force; ``pending`` the ACK or NACK still owed.
    """

    __slots__ = ("applied", "failures", "index", "last_error", "pending", "source")

    def __init__(self) -> None:
        self.index: int | None = None
        self.applied: int | None = None
        self.source: str | None = None  # "control-plane" | "cache"
        self.pending: Ack | None = None
        self.failures = 0
        self.last_error: str | None = None

    @property
    def in_force(self) -> bool:
        return self.source is not None

    def poll_params(self, node: Node, node_id: str, wait: float) -> dict[str, str]:
        params = {
            "node": node_id,
            "service": node.service,
            "wait": f"{max(1, round(wait * 1000))}ms",
        }
        if node.upstreams is not None:
            params["upstreams"] = ",".join(node.upstreams)
        if self.index is not None:
            params["index"] = str(self.index)
        return params

    def received(self, delivery: Delivery) -> None:
        """A delivery arrived: it supersedes any ACK still owed for an older one."""
        self.index = delivery.version
        self.pending = None

    def accepted(self, delivery: Delivery) -> None:
        self.applied = delivery.version
        self.source = "control-plane"
        self.last_error = None
        self.pending = Ack(delivery.version, delivery.nonce)

    def refused(self, delivery: Delivery, why: str) -> None:
        self.last_error = why
        self.pending = Ack(delivery.version, delivery.nonce, why)

    def cache_applied(self, version: int | None) -> None:
        self.applied = version
        self.source = "cache"
        if self.index is None:
            # Only when nothing was received: after a refused delivery the index
            # stays on it, or the control plane would send it again at once.
            self.index = version

    def round_failed(self, why: str) -> None:
        self.failures += 1
        self.last_error = why

    def round_succeeded(self) -> None:
        self.failures = 0


# -- the cache -----------------------------------------------------------------


@dataclass(frozen=True)
class Cached:
    version: int | None
    snapshot: Snapshot


def cache_path(cache_dir: Path, node_id: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in node_id).lstrip(".")
    return cache_dir / f"{safe or 'node'}.json"


def save_cache(path: Path, version: int | None, snapshot: Snapshot) -> None:
    """Write atomically: a reader (or a crash) sees the old file or the new one,
    never half of one.  The directory is fsynced so the rename survives power loss."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "format": CACHE_FORMAT,
        "version": version,
        "snapshot": snapshot.model_dump(mode="json", by_alias=True, exclude_none=True),
    }
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_cache(path: Path) -> Cached:
    """Read a cache file back; ``ConfigError`` naming the file if it cannot be used."""
    try:
        data: Any = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror or exc}")]) from None
    except ValueError as exc:
        raise ConfigError([(str(path), f"not JSON: {exc}")]) from None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        raise ConfigError([(str(path), f"not a snapshot cache of format {CACHE_FORMAT}")])
    version = data.get("version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise ConfigError([(f"{path!s}: version", "not an integer")])
    try:
        snapshot = Snapshot.model_validate(data.get("snapshot"))
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, f"{path}: snapshot")) from None
    return Cached(version, snapshot)


# -- the watch loop --------------------------------------------------------------


class PollError(Exception):
    """A round that got no usable answer (status, body): retried with backoff."""


class SnapshotWatcher:
    """Keeps ``apply`` fed with the control plane's snapshots for one node."""

    def __init__(
        self,
        url: str,
        node: Node,
        token: str | None,
        apply: Apply,
        cache_path: Path | None = None,
        wait: float = 30.0,
        rand: Callable[[], float] = random.random,
        node_id: str | None = None,
        backoff: Backoff = Backoff(),
        connect_timeout: float = 5.0,
    ) -> None:
        self.base = url.rstrip("/")
        self.node = node
        self.node_id = node_id or node.id
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._apply = apply
        self.cache_path = cache_path
        self.wait = wait
        self._rand = rand
        self.backoff = backoff
        self._timeout = aiohttp.ClientTimeout(total=wait + 15.0, connect=connect_timeout)
        self._ack_timeout = aiohttp.ClientTimeout(total=10.0, connect=connect_timeout)
        self.state = WatchState()
        self.in_force = asyncio.Event()
        self._cache_tried = False
        self._task: asyncio.Task[None] | None = None

    # lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"xds-{self.node_id}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector, headers=self._headers) as http:
            while True:
                try:
                    await self.round(http)
                except (aiohttp.ClientError, TimeoutError, PollError, DeliveryError) as exc:
                    why = str(exc) or type(exc).__name__
                    self.state.round_failed(why)
                    if not self.state.in_force:
                        self.use_cache()
                    delay = self.backoff.delay(self.state.failures, self._rand())
                    log.warning(
                        "control plane unavailable error=%r failures=%d retry_in=%.3fs",
                        why,
                        self.state.failures,
                        delay,
                    )
                    await asyncio.sleep(delay)
                else:
                    self.state.round_succeeded()

    async def round(self, http: aiohttp.ClientSession) -> None:
        """Send the ACK still owed, then one long-poll and what follows from it."""
        if self.state.pending is not None:
            await self.send_ack(http, self.state.pending)
        params = self.state.poll_params(self.node, self.node_id, self.wait)
        async with http.get(
            f"{self.base}/v1/snapshot", params=params, timeout=self._timeout
        ) as response:
            if response.status == 304:
                return
            body = await response.read()
            if response.status != 200:
                raise PollError(f"poll answered {response.status}: {_short(body)}")
        delivery = parse_delivery(body)
        self.state.received(delivery)
        self.take(delivery)
        await self.send_ack(http, self.state.pending)

    def take(self, delivery: Delivery) -> None:
        """Apply a delivery or refuse it; either way an ACK/NACK is then owed."""
        if delivery.snapshot is None:
            self._refuse(delivery, delivery.problem or "invalid snapshot")
            return
        try:
            self._apply(delivery.snapshot)
        except ConfigError as exc:
            self._refuse(delivery, reason(exc.problems))
            return
        except Exception as exc:  # a fault in apply must not stop the watch
            log.exception("snapshot apply failed version=%d", delivery.version)
            self._refuse(delivery, f"internal error while applying: {exc!r}")
            return
        self.state.accepted(delivery)
        self.in_force.set()
        log.info("snapshot applied version=%d source=control-plane", delivery.version)
        if self.cache_path is not None:
            try:
                save_cache(self.cache_path, delivery.version, delivery.snapshot)
            except OSError as exc:
                log.warning("snapshot cache not written path=%s error=%r", self.cache_path, exc)

    def _refuse(self, delivery: Delivery, why: str) -> None:
        self.state.refused(delivery, why)
        log.warning("snapshot refused version=%d reason=%r", delivery.version, why)
        if not self.state.in_force:
            self.use_cache()

    def use_cache(self) -> bool:
        """Apply the cached snapshot, once per run, while nothing is in force."""
        if self._cache_tried or self.cache_path is None or self.state.in_force:
            return False
        self._cache_tried = True
        try:
            cached = load_cache(self.cache_path)
            self._apply(cached.snapshot)
        except ConfigError as exc:
            log.warning("snapshot cache unusable reason=%r", reason(exc.problems))
            return False
        except Exception:
            log.exception("snapshot cache apply failed path=%s", self.cache_path)
            return False
        self.state.cache_applied(cached.version)
        self.in_force.set()
        log.info("snapshot applied version=%s source=cache", cached.version)
        return True

    async def send_ack(self, http: aiohttp.ClientSession, ack: Ack | None) -> None:
        if ack is None:
            return
        async with http.post(
            f"{self.base}/v1/ack", json=ack.body(self.node_id), timeout=self._ack_timeout
        ) as response:
            body = await response.read()
            if response.status >= 500 or response.status in (401, 403):
                raise PollError(f"ack answered {response.status}: {_short(body)}")
            if response.status != 200:
                # 409: not the last snapshot sent (the control plane moved on or
                # restarted); the next poll brings the current one.
                log.info("ack not recorded status=%d body=%s", response.status, _short(body))
        if self.state.pending is ack:
            self.state.pending = None


def _short(body: bytes) -> str:
    return body[:200].decode("utf-8", "replace")


def watcher_for(
    boot: Bootstrap, apply: Apply, worker_index: str | None = None
) -> SnapshotWatcher | None:
    """The watcher a sidecar runs, or None in static mode.  Each worker of a
    multi-worker sidecar is its own proxy for the control plane (``ID/wN``):
    they poll and ACK independently, so their nonces cannot cross."""
    cp: ControlPlane | None = boot.control_plane
    if cp is None:
        return None
    token = cp.token.get_secret_value() if cp.token is not None else None
    if cp.token_file is not None:
        try:
            token = cp.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([("control_plane.token_file", f"cannot read: {exc}")]) from None
    node_id = boot.node.id if worker_index is None else f"{boot.node.id}/w{worker_index}"
    path = cache_path(cp.cache_dir, boot.node.id) if cp.cache_dir is not None else None
    return SnapshotWatcher(cp.url, boot.node, token, apply, path, cp.wait, node_id=node_id)


async def first_snapshot(watcher: SnapshotWatcher, stop: asyncio.Event) -> bool:
    """Wait until a snapshot is in force (True) or ``stop`` is set (False)."""
    waits = [asyncio.ensure_future(watcher.in_force.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiting in waits:
            waiting.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
    return watcher.in_force.is_set()
