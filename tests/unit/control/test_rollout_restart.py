"""Rollouts across a control-plane restart: each weight written stores the rollout
in the same commit; a restarted control plane resumes it from that weight, judging
from the first sample it sees (the counters before the restart were never seen)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from control.app import build_app
from control.rollout import CanarySample, Phase, Rollout, RolloutRecord, RolloutSpec, Step
from control.settings import ControlSettings
from control.store import Change, StoreError
from control.store.consul import ConsulAddress, ConsulStore
from control.store.sqlite import SQLiteStore
from tests.consul_double import ConsulDouble

ADMIN = {"Authorization": "Bearer admin-secret"}
POLICY = {"subsets": {"v1": {"labels": {"version": "v1"}}, "v2": {"labels": {"version": "v2"}}}}
ROUTE = {"rules": [{"backends": [{"subset": "v1"}], "timeout": "2s"}]}
SPEC = RolloutSpec(
    service="ratings", stable="v1", canary="v2", step_weight=10, max_weight=50, interval="10s"
)


def progressing(weight: int = 20, spent: float = 3.0) -> RolloutRecord:
    return RolloutRecord(
        spec=SPEC, phase=Phase.PROGRESSING, canary_weight=weight, failed_checks=1,
        spent=spent, reason="checks passed: 10% -> 20%",
    )  # fmt: skip


def test_a_rollout_resumes_from_its_record_with_the_same_progress() -> None:
    rollout = Rollout(SPEC)
    rollout.advance(0.0, CanarySample())
    rollout.advance(11.0, CanarySample(requests=50))
    assert Rollout.resume(rollout.record(), now=500.0).record() == rollout.record()


def test_a_resumed_rollout_judges_from_the_first_sample_after_the_restart() -> None:
    rollout = Rollout.resume(progressing(), now=100.0)
    # Lifetime counters with many failures: judged from zero this interval would fail.
    first = rollout.advance(100.0, CanarySample(requests=1000, failures=500))
    assert first.step is Step.WAIT
    assert rollout.spent == 3.0
    passed = rollout.advance(111.0, CanarySample(requests=1100, failures=500))
    assert (passed.step, passed.canary_weight) == (Step.SET_WEIGHT, 30)
    assert rollout.failed_checks == 1


def test_a_finished_rollout_resumes_finished() -> None:
    record = progressing().model_copy(update={"phase": Phase.PROMOTED, "canary_weight": 100})
    rollout = Rollout.resume(record, now=0.0)
    assert rollout.finished
    assert rollout.advance(50.0, CanarySample(requests=5)).step is Step.WAIT


def test_sqlite_keeps_rollouts_and_refuses_a_bad_one_by_name(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    store = SQLiteStore(path)
    put = Change("rollout", "put", "routes/ratings", "", put_rollouts=(progressing(),))
    store.commit(0, put, 1.0)
    store.close()
    store = SQLiteStore(path)
    try:
        assert store.load().rollouts == {"ratings": progressing()}
        store.commit(
            1, Change("a", "delete", "rollouts/ratings", "", deleted_rollouts=("ratings",)), 2.0
        )
        assert store.load().rollouts == {}
    finally:
        store.close()
    db = sqlite3.connect(path)
    db.execute("INSERT INTO rollouts VALUES ('ratings', ?)", ('{"phase": "sideways"}',))
    db.commit()
    db.close()
    store = SQLiteStore(path)
    try:
        with pytest.raises(StoreError, match="table rollouts: rollout of service 'ratings'"):
            store.load()
    finally:
        store.close()


async def test_consul_keeps_rollouts_and_refuses_a_bad_one_by_name(double: ConsulDouble) -> None:
    store = ConsulStore(ConsulAddress.parse(double.url), prefix="test")
    try:
        put = Change("rollout", "put", "routes/ratings", "", put_rollouts=(progressing(),))
        await asyncio.to_thread(store.commit, 0, put, 1.0)
        assert (await asyncio.to_thread(store.load)).rollouts == {"ratings": progressing()}
        head = double.state.kv["test/head"]
        data = json.loads(head.value)
        data["rollouts"]["ratings"]["canary_weight"] = 250
        head.value = json.dumps(data).encode()
        with pytest.raises(StoreError, match="test/head: rollout of service 'ratings'"):
            await asyncio.to_thread(store.load)
    finally:
        store.close()


async def _client(tmp_path: Path) -> TestClient[Any, Any]:
    settings = ControlSettings(admin_token="admin-secret", data_dir=tmp_path, tick=0.02)
    client = TestClient(TestServer(build_app(settings, SQLiteStore(tmp_path / "m.db"))))
    await client.start_server()
    return client


async def test_a_rollout_in_progress_is_back_after_a_restart(tmp_path: Path) -> None:
    body = {"stable": "v1", "canary": "v2", "step_weight": 25, "max_weight": 50,
            "interval": "1h"}  # fmt: skip
    first = await _client(tmp_path)
    try:
        assert (await first.put("/v1/policies/ratings", json=POLICY, headers=ADMIN)).status == 200
        assert (await first.put("/v1/routes/ratings", json=ROUTE, headers=ADMIN)).status == 200
        started = await first.put("/v1/rollouts/ratings", json=body, headers=ADMIN)
        assert started.status == 200
        before = await started.json()
    finally:
        await first.close()

    second = await _client(tmp_path)
    try:
        got = await second.get("/v1/rollouts/ratings", headers=ADMIN)
        assert got.status == 200
        after = await got.json()
        keys = ("phase", "canary_weight", "failed_checks")
        assert [after[k] for k in keys] == [before[k] for k in keys]
        assert after["phase"] == "progressing" and after["canary_weight"] == 25
        assert (await second.delete("/v1/rollouts/ratings", headers=ADMIN)).status == 200
    finally:
        await second.close()

    third = await _client(tmp_path)
    try:
        assert (await third.get("/v1/rollouts/ratings", headers=ADMIN)).status == 404
        routes = await (await third.get("/v1/routes/ratings", headers=ADMIN)).json()
        weights = [b.get("weight") for b in routes["rules"][0]["backends"]]
        assert 0 in weights  # the rollout's delete rolled the canary back first
    finally:
        await third.close()
