"""A bounded schemathesis run against the API's own OpenAPI spec, in process (ASGI).

The world is a small generated store (400 deals) with a trained champion, so the model-backed
operations answer for real instead of 503. Two properties over every operation in the spec:

- no request, valid or invalid (schemathesis's negative mode: wrong types, missing auth...), gets
  a 5xx answer;
- answers to valid requests conform to the spec (status code documented, content type, headers and
  body match their schema), asked as RevOps, as a rep (403s, 404s) and with no key (401s): every
  timestamp carries its offset, every 422 has the list shape, every error status is documented
  with its body. Not checked: that every schema-valid request is accepted
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
            # A forecast for a date not asked before fits its model in the request (seconds to
            # minutes): the bound is on examples, not on one answer's time.
            case.call_and_validate(headers=headers, checks=checks, timeout=600)

        try:
            run()
        except Unsatisfiable:
            pass  # nothing to make invalid (no parameters): the valid run covers it
        except BaseException as err:  # schemathesis raises a BaseExceptionGroup
            if isinstance(err, KeyboardInterrupt | SystemExit):
                raise
            inner = "".join(f"\n  {type(e).__name__}: {e}" for e in getattr(err, "exceptions", ()))
            failures[operation.label] = f"{type(err).__name__}: {err}{inner}"
    return failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema, world: World, mode: GenerationMode
) -> None:
    failures = _fuzz(api_schema, world.headers("revops"), mode, [not_a_server_error])
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


@pytest.mark.parametrize("caller", ["revops", "rep", None], ids=["revops", "rep", "no key"])
def test_answers_to_valid_requests_conform_to_the_spec(
    api_schema: schemathesis.BaseSchema, world: World, caller: str | None
) -> None:
    # A rep meets 403 (RevOps operations, other scopes) and 404s; no key meets 401: each must be
    # a documented status with a body of its documented schema.
    failures = _fuzz(api_schema, world.headers(caller), GenerationMode.POSITIVE, CONFORMANCE)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_fuzzed_spec_keeps_every_other_operation(world: World) -> None:
    # Guards the exclusion above: it must leave every other operation in the run.
    paths = set(create_app(world.settings()).openapi()["paths"])
    kept = {p for p in paths if not re.match(EXPENSIVE, p)}
    assert {"/v1/score", "/v1/deals/scores", "/v1/models/promote", "/healthz"} <= kept
    assert paths - kept == {"/v1/models/retrain", "/v1/data/import"}
