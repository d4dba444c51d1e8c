"""The OpenAPI document at /openapi.json against the running service.

Schemathesis generates requests from the document for every operation and
sends them to a real ``meshcontrol run`` (port 0, a temporary data directory,
admin and read tokens), with the admin token so that writes get past the
bearer check and reach validation.  Each answer must not be a server error,
and its status code, content type and body must be ones the document declares
for that operation.  Bounded: ``max_examples`` per operation, one retry-free
request each, no long-poll waits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.integration.controlproc import meshcontrol

pytestmark = pytest.mark.integration

ADMIN_TOKEN = "schemathesis-admin-token"
READ_TOKEN = "schemathesis-read-token"
MAX_EXAMPLES = 20
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def control_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("meshcontrol")
    env = {"MESHCONTROL_ADMIN_TOKEN": ADMIN_TOKEN, "MESHCONTROL_READ_TOKEN": READ_TOKEN}
    with meshcontrol(data_dir, env, log=data_dir / "meshcontrol.log") as base:
        yield base


@pytest.fixture(scope="module")
def api_schema(control_url: str) -> Any:
    loaded = schemathesis.openapi.from_url(f"{control_url}/openapi.json")
    loaded.config.base_url = control_url
    # The snapshot long-poll holds a request up to its ``wait``: generated
    # waits would make the run unbounded.  Its contract is tested in
    # tests/unit/control and tests/integration/test_xds_push.py.
    return loaded.exclude(path="/v1/snapshot")


def test_every_answer_is_one_the_document_declares(api_schema: Any, control_url: str) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    failures: list[str] = []
    sent: Counter[str] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    with requests.Session() as session:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=MAX_EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def exchange(case: Any) -> None:
                sent[case.operation.label] += 1
                case.call_and_validate(
                    base_url=control_url,
                    session=session,
                    headers=headers,
                    checks=CHECKS,
                    timeout=10,
                )

            try:
                exchange()
            except Exception as exc:  # every operation is tried; all failures reported
                failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)
    assert set(sent) == {op.label for op in operations}, sent
