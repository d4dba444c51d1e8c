"""Service specs in the stores: committed with the version, reloaded by a new
process (a restart), and a stored record that does not parse refused by name."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from control.nodes import ServiceSpec
from control.store import Change, StoreError
from control.store.consul import ConsulAddress, ConsulStore
from control.store.sqlite import MIGRATIONS, SQLiteStore
from tests.consul_double import ConsulDouble

WEB = ServiceSpec.model_validate(
    {
        "command": ["python", "-m", "web"],
        "env": {"MODE": "prod"},
        "cpu": "250m",
        "memory": "128Mi",
        "min_replicas": 2,
        "max_replicas": 5,
        "autoscaling": {"metric": "rps", "target": 40, "stable_window": "30s"},
    }
)
API = ServiceSpec(command=["api"], min_replicas=1, max_replicas=1)


def _put(name: str, spec: ServiceSpec) -> Change:
    return Change("admin", "put", f"specs/{name}", "", put_specs=((name, spec),))


def _delete(name: str) -> Change:
    return Change("admin", "delete", f"specs/{name}", "", deleted_specs=(name,))


# -- SQLite --------------------------------------------------------------------------


def test_sqlite_specs_survive_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = SQLiteStore(path)
    store.commit(0, _put("web", WEB), 1.0)
    store.commit(1, _put("api", API), 2.0)
    store.commit(2, _delete("api"), 3.0)
    store.close()
    again = SQLiteStore(path)
    try:
        loaded = again.load()
        assert loaded.specs == {"web": WEB}
        assert loaded.version == 3
        assert [(e.action, e.target) for e in again.history(10)] == [
            ("delete", "specs/api"),
            ("put", "specs/api"),
            ("put", "specs/web"),
        ]
    finally:
        again.close()


def test_sqlite_file_of_the_first_schema_gains_the_specs_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO history VALUES (1, 1.0, 'admin', 'put', 'x', 's', NULL)")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        assert store.schema_version() == len(MIGRATIONS)
        assert store.load().specs == {}
        store.commit(1, _put("web", WEB), 2.0)
        assert store.load().specs == {"web": WEB}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("stored", "says"),
    [
        ("{not json", "Invalid JSON"),
        ('{"command": []}', "command"),
        ('{"command": ["x"], "min_replicas": 9, "max_replicas": 2}', "min_replicas"),
    ],
)
def test_sqlite_refuses_a_bad_spec_naming_the_table_and_service(
    tmp_path: Path, stored: str, says: str
) -> None:
    path = tmp_path / "m.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO specs VALUES ('web', ?)", (stored,))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        bad = "table specs: spec of service 'web' is not valid"
        with pytest.raises(StoreError, match=bad) as e:
            store.load()
        assert says in str(e.value)
    finally:
        store.close()


def test_sqlite_refuses_a_bad_instance_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    SQLiteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO instances VALUES ('ratings-1', '{\"port\": 0}')")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        with pytest.raises(StoreError, match="table instances: instance 'ratings-1'"):
            store.load()
    finally:
        store.close()


# -- Consul --------------------------------------------------------------------------


def _store(double: ConsulDouble) -> ConsulStore:
    return ConsulStore(ConsulAddress.parse(double.url), prefix="test")


async def test_consul_specs_are_reloaded_by_a_new_store(double: ConsulDouble) -> None:
    first = _store(double)
    try:
        await asyncio.to_thread(first.commit, 0, _put("web", WEB), 1.0)
        await asyncio.to_thread(first.commit, 1, _put("api", API), 2.0)
        await asyncio.to_thread(first.commit, 2, _delete("api"), 3.0)
    finally:
        first.close()
    second = _store(double)
    try:
        loaded = await asyncio.to_thread(second.load)
        assert loaded.specs == {"web": WEB}
        assert loaded.version == 3
        history = await asyncio.to_thread(second.history, 10)
        assert [e.target for e in history] == ["specs/api", "specs/api", "specs/web"]
    finally:
        second.close()


async def test_consul_head_without_specs_loads_none(double: ConsulDouble) -> None:
    store = _store(double)
    try:
        await asyncio.to_thread(store.commit, 0, _put("web", WEB), 1.0)
        head = double.state.kv["test/head"]
        data = json.loads(head.value)
        del data["specs"]  # as written before specs were stored
        head.value = json.dumps(data).encode()
        assert (await asyncio.to_thread(store.load)).specs == {}
    finally:
        store.close()


async def test_consul_refuses_a_bad_spec_naming_the_key_and_service(double: ConsulDouble) -> None:
    store = _store(double)
    try:
        await asyncio.to_thread(store.commit, 0, _put("web", WEB), 1.0)
        head = double.state.kv["test/head"]
        data = json.loads(head.value)
        data["specs"]["web"]["cpu"] = "lots"
        head.value = json.dumps(data).encode()
        with pytest.raises(
            StoreError, match="consul key test/head: spec of service 'web' is not valid"
        ) as e:
            await asyncio.to_thread(store.load)
        assert "cpu" in str(e.value)
    finally:
        store.close()
