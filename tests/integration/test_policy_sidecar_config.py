"""A snapshot whose filter config is wrong keeps the sidecar from starting, and
the refusal names the field below ``config``.

``plugin_env`` makes the example plugin (examples/ab_tagger) visible to a
sidecar as ``pip install`` would: its source on PYTHONPATH plus a dist-info
directory declaring the ``meshproxy.filters`` entry point."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import StartProxy
from tests.integration.origin import Origin
from tests.integration.proxyproc import basic_config

pytestmark = pytest.mark.integration

EXAMPLE_SRC = Path(__file__).resolve().parents[2] / "examples" / "ab_tagger" / "src"


def plugin_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    dist = site / "meshproxy_ab_tagger-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: meshproxy-ab-tagger\nVersion: 0.1.0\n"
    )
    (dist / "entry_points.txt").write_text("[meshproxy.filters]\nab_tagger = ab_tagger:AbTagger\n")
    paths = [str(EXAMPLE_SRC), str(site), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in paths if p)}


async def test_a_bad_plugin_config_refuses_to_start_naming_the_field(
    origin: Origin, proxies: StartProxy, tmp_path: Path
) -> None:
    config = basic_config({"web": [origin.port]})
    config["snapshot"]["filters"] = [{"name": "ab_tagger", "config": {"percent_b": 101}}]
    with pytest.raises(RuntimeError, match=r"snapshot\.filters\.0\.config\.percent_b"):
        await proxies(config, env=plugin_env(tmp_path))
