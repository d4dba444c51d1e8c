import sqlite3
from pathlib import Path

import pytest

from control.registry.local import Instance, InstanceSpec
from control.state import DesiredState, parse_resource
from control.store import Change, StoreError, VersionConflict
from control.store.sqlite import MIGRATIONS, SQLiteStore


def _state(*subsets: str) -> DesiredState:
    body = {"subsets": {s: {"labels": {"version": s}} for s in subsets}}
    return DesiredState().with_resource(
        "policies", "ratings", parse_resource("policies", "ratings", body)
    )


def _instance(port: int = 9001) -> Instance:
    spec = InstanceSpec(service="ratings", address="127.0.0.1", port=port, ttl="10s")
    return Instance(f"ratings-{port}", spec)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "m.db")
    yield s  # type: ignore[misc]
    s.close()


def test_fresh_store_is_migrated_to_the_latest_schema_in_wal_mode(store: SQLiteStore) -> None:
    assert store.schema_version() == len(MIGRATIONS)
    (mode,) = store._db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
    loaded = store.load()
    assert (loaded.version, loaded.state, loaded.instances) == (0, DesiredState(), [])


def test_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="schema version"):
        SQLiteStore(path)


def test_commit_is_compare_and_set_on_the_global_version(store: SQLiteStore) -> None:
    assert store.commit(0, Change("admin", "put", "policies/ratings", "s", _state("v1")), 1.0) == 1
    with pytest.raises(VersionConflict) as err:
        store.commit(0, Change("admin", "put", "policies/ratings", "s", _state("v2")), 2.0)
    assert (err.value.expected, err.value.actual) == (0, 1)
    assert store.load().state == _state("v1")
    assert len(store.history(10)) == 1


def test_history_is_newest_first_and_pages_with_before(store: SQLiteStore) -> None:
    for version, subset in enumerate(["a", "b", "c"]):
        store.commit(
            version, Change("admin", "put", "policies/ratings", subset, _state(subset)), 1.0
        )
    assert [e.version for e in store.history(10)] == [3, 2, 1]
    assert [e.version for e in store.history(1, before=3)] == [2]
    entry = store.entry(2)
    assert entry is not None and (entry.actor, entry.summary, entry.state_changed) == (
        "admin",
        "b",
        True,
    )


def test_state_at_a_registry_only_version_is_the_last_desired_state(store: SQLiteStore) -> None:
    store.commit(0, Change("admin", "put", "policies/ratings", "", _state("v1")), 1.0)
    store.commit(
        1, Change("admin", "register", "instances/x", "", put_instances=(_instance(),)), 2.0
    )
    store.commit(2, Change("admin", "put", "policies/ratings", "", _state("v2")), 3.0)
    assert store.state_at(2) == _state("v1")
    assert store.state_at(0) == DesiredState()
    assert store.state_at(4) is None
    assert store.entry(2) is not None and not store.entry(2).state_changed  # type: ignore[union-attr]


def test_everything_survives_reopening_the_file(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "m.db")
    first.commit(0, Change("admin", "put", "policies/ratings", "", _state("v1")), 1.0)
    change = Change("admin", "register", "i", "", put_instances=(_instance(9001), _instance(9002)))
    first.commit(1, change, 2.0)
    first.commit(
        2, Change("admin", "deregister", "i", "", deleted_instances=("ratings-9001",)), 3.0
    )
    first.close()
    second = SQLiteStore(tmp_path / "m.db")
    loaded = second.load()
    second.close()
    assert loaded.version == 3
    assert loaded.state == _state("v1")
    assert loaded.instances == [_instance(9002)]
