"""A bounded schemathesis run against the API's own OpenAPI spec, in process (ASGI), as RevOps.

The world is a small generated store (400 deals) with a trained champion, so the model-backed
operations answer for real instead of 503. Two properties over every operation in the spec:

- no request, valid or invalid (schemathesis's negative mode: wrong types, missing auth...), gets
  a 5xx answer;
- answers to valid requests conform to the spec (status code documented, content type, headers and
  body match their schema). Not checked: that every schema-valid request is accepted
  (``positive_data_acceptance``): stages come from the stage configuration file and dates have a
  supported range, neither of which the spec can state, so a 422 there is correct.

Left out of the run: ``POST /v1/models/retrain`` (each accepted request starts a training job) and
``POST /v1/data/import`` (it replaces the store); their validation has its own tests.

Bounds: per operation at most 12 valid and 6 invalid examples (derandomized), no Hypothesis
deadline, no example database; about a minute in all, most of it training the champion.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.api.app import create_app
from tests.served import World, build_world

EXPENSIVE = r"^/v1/(models/retrain|data/import)$"
CONFORMANCE = [
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
]
# Non-conformances this run found in the app, reported and not yet fixed (this test may not change
# app code). Each entry is an operation and a pattern its whole failure report must match; any other
# failure, or these on another operation, fails the test. Delete an entry once it is fixed.
NAIVE_DATETIME = r'"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d" is not (a "date-time"|valid under any)'
KNOWN: dict[str, str] = {
    # Datetimes are served without a UTC offset, which RFC 3339 `date-time` requires.
    "GET /v1/pipeline/metrics": NAIVE_DATETIME,
    "GET /v1/pipeline/hygiene": NAIVE_DATETIME,
    "GET /v1/pipeline/review": NAIVE_DATETIME,
    "GET /v1/deals/scores": NAIVE_DATETIME,
    # An out-of-range `as_of` is a 422 whose `detail` is a string, not the documented list.
    "GET /v1/deals/{deal_id}": r"outside the supported range.*is not of type \"array\"",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("fuzz"), deals=400)


@pytest.fixture(scope="module")
def api_schema(world: World) -> schemathesis.BaseSchema:
    app = create_app(world.settings())
    return schemathesis.openapi.from_asgi("/openapi.json", app).exclude(path_regex=EXPENSIVE)


def _fuzz(
    api_schema: schemathesis.BaseSchema,
    headers: dict[str, str],
    mode: GenerationMode,
    checks: list[Callable[..., bool | None]],
) -> dict[str, str]:
    """Run every operation (schemathesis's own pytest loaders fail under pytest 9: they set
    ``node._nodeid``); return each failing operation's report."""
    failures: dict[str, str] = {}
    for result in api_schema.get_all_operations():
        if not isinstance(result, Ok):
            failures[f"invalid spec #{len(failures)}"] = str(result.err())
            continue
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=12 if mode is GenerationMode.POSITIVE else 6,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers, checks=checks)

        try:
            run()
        except Unsatisfiable:
            pass  # nothing to make invalid (no parameters): the valid run covers it
        except BaseException as err:  # schemathesis raises a BaseExceptionGroup
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            failures[operation.label] = f"{type(err).__name__}: {err}"
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema, world: World, mode: GenerationMode
) -> None:
    failures = _fuzz(api_schema, world.headers("revops"), mode, [not_a_server_error])
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_answers_to_valid_requests_conform_to_the_spec(
    api_schema: schemathesis.BaseSchema, world: World
) -> None:
    failures = _fuzz(api_schema, world.headers("revops"), GenerationMode.POSITIVE, CONFORMANCE)
    unknown = {
        label: report
        for label, report in failures.items()
        if label not in KNOWN or not _only(KNOWN[label], report)
    }
    assert not unknown, "\n\n".join(f"{k}:\n{v}" for k, v in unknown.items())


def _only(pattern: str, report: str) -> bool:
    """Every distinct failure in a schemathesis report matches ``pattern``."""
    parts = re.split(r"\n- ST\d+ ", report)[1:]
    return bool(parts) and all(re.search(pattern, p, re.DOTALL) for p in parts)


def test_the_fuzzed_spec_keeps_every_other_operation(world: World) -> None:
    # Guards the exclusion above: it must leave every other operation in the run.
    paths = set(create_app(world.settings()).openapi()["paths"])
    kept = {p for p in paths if not re.match(EXPENSIVE, p)}
    assert {"/v1/score", "/v1/deals/scores", "/v1/models/promote", "/healthz"} <= kept
    assert paths - kept == {"/v1/models/retrain", "/v1/data/import"}
