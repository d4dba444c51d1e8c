"""The last-known-good cache: atomic writes that round-trip, and clear refusals."""

import json
import os
from pathlib import Path

import pytest

from meshproxy.config import ConfigError, Snapshot
from meshproxy.xds import cache_path, load_cache, save_cache

SNAPSHOT = Snapshot.model_validate(
    {
        "version": "12",
        "services": {
            "ratings": {
                "endpoints": [
                    {"address": "127.0.0.1", "port": 9001, "labels": {"version": "v1"}},
                    {"address": "::1", "port": 9002, "labels": {"version": "v2"}},
                ]
            }
        },
        "routes": [
            {
                "service": "ratings",
                "rules": [
                    {
                        "match": [{"path": {"prefix": "/api"}}],
                        "backends": [
                            {"subset": "v1", "weight": 90},
                            {"subset": "v2", "weight": 10},
                        ],
                        "timeout": "250ms",
                        "retries": {"attempts": 2, "per_try_timeout": "100ms"},
                    }
                ],
            }
        ],
        "policies": [
            {
                "service": "ratings",
                "subsets": {
                    "v1": {"labels": {"version": "v1"}},
                    "v2": {"labels": {"version": "v2"}},
                },
            }
        ],
        "access": [{"service": "ratings", "action": "allow", "rules": []}],
    }
)


def test_a_saved_snapshot_loads_back_equal_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "cache" / "reviews-1.json"
    save_cache(path, 12, SNAPSHOT)
    cached = load_cache(path)
    assert cached.version == 12
    assert cached.snapshot == SNAPSHOT


def test_saving_replaces_the_file_and_leaves_no_temporary_behind(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    save_cache(path, 1, Snapshot())
    save_cache(path, 2, SNAPSHOT)
    assert load_cache(path).version == 2
    assert os.listdir(tmp_path) == ["n.json"]


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "n.json"
    save_cache(path, 1, SNAPSHOT)

    def full_disk(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError):
        save_cache(path, 2, Snapshot())
    monkeypatch.undo()
    assert load_cache(path).version == 1
    assert os.listdir(tmp_path) == ["n.json"]


def test_a_missing_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_cache(tmp_path / "absent.json")
    assert caught.value.problems[0][0] == str(tmp_path / "absent.json")
    assert "cannot read" in caught.value.problems[0][1]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{half", "not JSON"),
        ('{"format": 99, "snapshot": {}}', "format 1"),
        ('{"format": 1, "version": "x", "snapshot": {}}', "not an integer"),
    ],
)
def test_an_unusable_file_is_refused_with_the_reason(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "n.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_cache(path)
    assert expected in str(caught.value)


def test_an_invalid_cached_snapshot_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    bad = {"services": {"s": {"endpoints": [{"address": "127.0.0.1", "port": 0}]}}}
    path.write_text(json.dumps({"format": 1, "version": 3, "snapshot": bad}))
    with pytest.raises(ConfigError) as caught:
        load_cache(path)
    assert caught.value.problems[0][0] == f"{path}: snapshot.services.s.endpoints.0.port"


def test_cache_file_names_are_safe_whatever_the_node_id(tmp_path: Path) -> None:
    assert cache_path(tmp_path, "reviews-1") == tmp_path / "reviews-1.json"
    assert cache_path(tmp_path, "../../etc/x") == tmp_path / "_.._etc_x.json"
    assert cache_path(tmp_path, "..").parent == tmp_path
