"""The replicated store: Consul KV through py-consul, check-and-set on one key.

Layout under the prefix (``meshproxy/`` by default):

    head                   {"version", "state_version", "entry", "instances",
                            "specs", "rollouts"}
    history/000000000042   one entry per version: who, what, and the full
                           desired state on the versions that changed it

``head`` is the only key ever overwritten, and every write of it is a
check-and-set on its ``ModifyIndex``: that write *is* the commit, so two
control-plane replicas racing for the same version cannot both win, and the
loser learns the new version (``VersionConflict``) and retries on the new state.
The winner then copies ``head.entry`` to its ``history/`` key, created only if
absent (``cas=0``).  Should it die in between, the next committer (or reader)
finds the entry in ``head`` and writes it for it, so history has no holes and a
late or repeated copy changes nothing.

Instances, service specs and rollouts live in ``head`` too, so they move with the version
under the same check-and-set; a record there that does not parse is refused at
load, naming the key and the record.  Consul caps a value at 512 KiB: that bounds the desired state
plus the registered instances (a few thousand) per version.

``watch`` is a blocking query on ``head`` on a client of its own, so that a
replica learns another one's commits and wakes its proxies; it runs on a thread
its own, never on the store's thread; ``follow_replicas`` is that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import consul
import requests

from control.registry.consul import Backoff
from control.state import DesiredState
from control.store.base import (
    Change,
    HistoryEntry,
    Loaded,
    Store,
    StoreError,
    VersionConflict,
    parse_instance,
    parse_record,
    parse_rollout,
    parse_spec,
)

log = logging.getLogger("meshcontrol.consul")

DEFAULT_PREFIX = "meshproxy"
_CAS_TRIES = 8


@dataclass(frozen=True)
class ConsulAddress:
    """Where the agent is, in the form of ``CONSUL_HTTP_ADDR``, and its token."""

    host: str = "127.0.0.1"
    port: int = 8500
    scheme: str = "http"
    token: str | None = None

    @classmethod
    def parse(cls, addr: str, token: str | None = None) -> ConsulAddress:
        """``127.0.0.1:8500``, ``http://host:8500`` or ``https://[::1]:8501``."""
        text = addr.strip()
        if "//" not in text:
            text = "http://" + text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise StoreError(f"CONSUL_HTTP_ADDR {addr!r} is not host:port or an http(s) URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 8500)
        except ValueError:
            raise StoreError(f"CONSUL_HTTP_ADDR {addr!r} has a bad port") from None
        return cls(parts.hostname, port, parts.scheme, token or None)

    @classmethod
    def from_env(cls) -> ConsulAddress:
        return cls.parse(
            os.environ.get("CONSUL_HTTP_ADDR", "127.0.0.1:8500"),
            os.environ.get("CONSUL_HTTP_TOKEN"),
        )

    def client(self) -> consul.Consul:
        # host/port are given, so py-consul does not read CONSUL_HTTP_ADDR itself.
        return consul.Consul(host=self.host, port=self.port, scheme=self.scheme, token=self.token)


# What a call to Consul may raise when the agent is away or refuses us.
CONSUL_ERRORS: tuple[type[Exception], ...] = (consul.ConsulException, requests.RequestException)


def _entry_json(version: int, now: float, change: Change, state_version: int) -> dict[str, Any]:
    return {
        "version": version,
        "time": now,
        "actor": change.actor,
        "action": change.action,
        "target": change.target,
        "summary": change.summary,
        "state": json.loads(change.state.to_json()) if change.state is not None else None,
        "state_version": state_version,
    }


def _history_entry(data: dict[str, Any]) -> HistoryEntry:
    return HistoryEntry(
        int(data["version"]),
        float(data["time"]),
        str(data["actor"]),
        str(data["action"]),
        str(data["target"]),
        str(data["summary"]),
        data["state"] is not None,
    )


@dataclass(frozen=True)
class _Head:
    modify_index: int  # 0: no head yet (an empty store)
    version: int
    state_version: int
    entry: dict[str, Any] | None
    instances: dict[str, dict[str, Any]]
    specs: dict[str, dict[str, Any]]
    rollouts: dict[str, dict[str, Any]]


class ConsulStore(Store):
    def __init__(self, address: ConsulAddress, prefix: str = DEFAULT_PREFIX) -> None:
        self.address = address
        self.prefix = prefix.strip("/")
        self._kv = address.client().kv
        self._watch_kv = address.client().kv

    @property
    def head_key(self) -> str:
        return f"{self.prefix}/head"

    def _history_key(self, version: int) -> str:
        return f"{self.prefix}/history/{version:012d}"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CONSUL_ERRORS as exc:
            raise StoreError(
                f"consul at {self.address.host}:{self.address.port}: {what}: {exc}"
            ) from None

    @staticmethod
    def _decode(raw: bytes | str | None, key: str) -> dict[str, Any]:
        try:
            data = json.loads(raw or b"")
        except ValueError as exc:
            raise StoreError(f"consul key {key} does not hold JSON: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"consul key {key} does not hold a JSON object")
        return data

    def _parse_head(self, item: dict[str, Any] | None) -> _Head:
        if item is None:
            return _Head(0, 0, 0, None, {}, {}, {})
        data = self._decode(item["Value"], self.head_key)
        try:
            return _Head(
                int(item["ModifyIndex"]),
                int(data["version"]),
                int(data["state_version"]),
                data.get("entry"),
                dict(data.get("instances") or {}),
                dict(data.get("specs") or {}),
                dict(data.get("rollouts") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"consul key {self.head_key} is malformed: {exc!r}") from None

    def _head(self) -> _Head:
        _, item = self._call("read head", self._kv.get, self.head_key)
        return self._parse_head(item)

    def _copy_entry(self, head: _Head) -> None:
        """Write ``head``'s entry to history if it is not there yet (idempotent)."""
        if head.entry is None:
            return
        body = json.dumps(head.entry, separators=(",", ":"))
        self._call("write history", self._kv.put, self._history_key(head.version), body, cas=0)

    def _read_entry(self, version: int, head: _Head) -> dict[str, Any] | None:
        if version == head.version and head.entry is not None:
            return head.entry
        key = self._history_key(version)
        _, item = self._call("read history", self._kv.get, key)
        return None if item is None else self._decode(item["Value"], key)

    def _state_of(self, version: int, head: _Head) -> DesiredState:
        if version == 0:
            return DesiredState()
        entry = self._read_entry(version, head)
        if entry is not None and entry.get("state") is None:
            entry = self._read_entry(int(entry["state_version"]), head)
        if entry is None or entry.get("state") is None:
            raise StoreError(f"consul history lacks the desired state of version {version}")
        where = f"consul key {self._history_key(int(entry['version']))}: the desired state"
        return parse_record(where, lambda: DesiredState.from_json(json.dumps(entry["state"])))

    # -- Store ---------------------------------------------------------------

    def load(self) -> Loaded:
        head = self._head()
        where = f"consul key {self.head_key}"
        instances = [parse_instance(where, i, raw) for i, raw in sorted(head.instances.items())]
        specs = {name: parse_spec(where, name, raw) for name, raw in sorted(head.specs.items())}
        rollouts = {
            name: parse_rollout(where, name, raw) for name, raw in sorted(head.rollouts.items())
        }
        state = self._state_of(head.state_version, head)
        return Loaded(head.version, state, instances, specs, rollouts)

    def commit(self, expected: int, change: Change, now: float) -> int:
        for _ in range(_CAS_TRIES):
            head = self._head()
            if head.version != expected:
                raise VersionConflict(expected, head.version)
            # Finish the previous commit's history copy before moving on, so
            # that an entry is never lost to a committer that died after its CAS.
            self._copy_entry(head)
            version = expected + 1
            state_version = version if change.state is not None else head.state_version
            instances = dict(head.instances)
            for instance in change.put_instances:
                instances[instance.id] = instance.spec.model_dump(mode="json")
            for gone in change.deleted_instances:
                instances.pop(gone, None)
            specs = dict(head.specs)
            for name, spec in change.put_specs:
                specs[name] = spec.model_dump(mode="json")
            for name in change.deleted_specs:
                specs.pop(name, None)
            rollouts = dict(head.rollouts)
            for record in change.put_rollouts:
                rollouts[record.spec.service] = record.model_dump(mode="json")
            for name in change.deleted_rollouts:
                rollouts.pop(name, None)
            new_head = {
                "version": version,
                "state_version": state_version,
                "entry": _entry_json(version, now, change, state_version),
                "instances": instances,
                "specs": specs,
                "rollouts": rollouts,
            }
            body = json.dumps(new_head, separators=(",", ":"))
            won = self._call("commit", self._kv.put, self.head_key, body, cas=head.modify_index)
            if won:
                # Best effort: if this fails, the next commit or read copies it.
                with contextlib.suppress(StoreError):
                    self._copy_entry(self._parse_head({"ModifyIndex": 0, "Value": body}))
                return version
        # The head kept changing under us without its version moving: someone
        # is rewriting it outside this protocol.
        raise StoreError(f"consul key {self.head_key} changed {_CAS_TRIES} times during one commit")

    def _stored_versions(self) -> list[int]:
        _, keys = self._call("list history", self._kv.get, f"{self.prefix}/history/", keys=True)
        versions = []
        for key in keys or []:
            tail = str(key).rsplit("/", 1)[-1]
            if tail.isdigit():
                versions.append(int(tail))
        return versions

    def history(self, limit: int, before: int | None = None) -> list[HistoryEntry]:
        head = self._head()
        versions = set(self._stored_versions())
        if head.entry is not None:
            versions.add(head.version)
        wanted = sorted((v for v in versions if before is None or v < before), reverse=True)
        out = []
        for version in wanted[:limit]:
            data = self._read_entry(version, head)
            if data is not None:
                out.append(_history_entry(data))
        return out

    def entry(self, version: int) -> HistoryEntry | None:
        head = self._head()
        if version <= 0 or version > head.version:
            return None
        data = self._read_entry(version, head)
        return _history_entry(data) if data is not None else None

    def state_at(self, version: int) -> DesiredState | None:
        head = self._head()
        if version < 0 or version > head.version:
            return None
        return self._state_of(version, head)

    def close(self) -> None:
        for kv in (self._kv, self._watch_kv):
            kv.agent.http.session.close()

    # -- replicas ------------------------------------------------------------

    def watch(self, index: int, wait: str = "30s") -> tuple[int, int]:
        """Block until ``head`` moves past Consul index ``index`` or ``wait``
        elapses; return the (Consul index, store version) to call it with next.

        The index returned may be the same (a timeout) or smaller (Consul's
        indices went backwards, say after a restore): the caller passes it on
        as it is, and a smaller one is turned to 0 here, which Consul answers at
        once, as its documentation asks of clients.
        """
        consul_index, item = self._call(
            "watch head", self._watch_kv.get, self.head_key, index=index or None, wait=wait
        )
        got = int(consul_index or 0)
        head = self._parse_head(item)
        if got < index:
            got = 0
        return max(got, 0), head.version


async def follow_replicas(
    store: ConsulStore,
    refresh: Callable[[], Awaitable[object]],
    wait: str = "10s",
    backoff_base: float = 0.5,
    backoff_cap: float = 30.0,
) -> None:
    """Call ``refresh`` whenever ``head`` moves (another replica committed),
    until cancelled; back off while Consul is unreachable."""
    loop = asyncio.get_running_loop()
    backoff = Backoff(backoff_base, backoff_cap)
    rng = random.Random()
    index = 0
    pool = ThreadPoolExecutor(1, thread_name_prefix="meshcontrol-consul-watch")
    try:
        while True:
            try:
                index, _ = await loop.run_in_executor(pool, store.watch, index, wait)
                backoff.succeeded()
                await refresh()
            except StoreError as exc:
                delay = backoff.failed(rng)
                log.warning("following other replicas: %s; retry in %.1fs", exc, delay)
                await asyncio.sleep(delay)
    finally:
        # Not waiting: a blocking query in flight ends by itself within ``wait``.
        pool.shutdown(wait=False, cancel_futures=True)
