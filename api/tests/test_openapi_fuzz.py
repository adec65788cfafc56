"""The REST API against its own OpenAPI document, fuzzed by schemathesis: requests generated
from /api/v1/openapi.json (valid and invalid ones) are sent to a live server (api/tests/live.py,
the demo model in process, so POST /chat really answers), and every answer must be no 5xx,
with a documented status, content type and body. Seeded and derandomised: a run is
reproducible, and a failure names the request that caused it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import hypothesis
import pytest
import requests
import schemathesis
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.tests.live import Api, assert_error, live_api

pytestmark = pytest.mark.e2e

CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]
SEED = 13  # the number
MAX_EXAMPLES = 25  # per operation in the fuzzing phase: the file runs in well under 90 s

SETUP = """
import json
from accounts.api_keys import SCOPES, api_key_create, api_key_revoke
from accounts.models import User

alice = User.objects.create_user(username="alice", email="alice@example.com", password="x-pw-1")
_, every = api_key_create(owner=alice, name="fuzz", scopes=list(SCOPES), actor=None)
revoked, revoked_key = api_key_create(owner=alice, name="gone", scopes=list(SCOPES), actor=None)
api_key_revoke(key=revoked, actor=alice)
print(json.dumps({"every": every, "revoked": revoked_key}))
"""

# Every generated message is a real chat turn: no per-minute cap, so that the fuzzer reaches
# the reply rather than a wall of (documented) 429s.
NO_LIMITS = {"CHAT_MESSAGES_PER_MINUTE": "0", "API_KEY_REQUESTS_PER_MINUTE": "0"}

# A well-formed key (prefix and secret of the right shape) that was never issued.
UNKNOWN_KEY = "eai_zzzzzzzz_" + "A" * 40


@pytest.fixture(scope="module")
def fuzz_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with live_api(tmp_path_factory.mktemp("openapi-fuzz"), SETUP, NO_LIMITS) as served:
        yield served


@pytest.fixture(scope="module")
def schema(fuzz_api: Api) -> BaseSchema:
    """The document the live server serves, as an integrator's tools would fetch it."""
    return schemathesis.openapi.from_url(fuzz_api.url("/openapi.json"), timeout=10)


def operations(schema: BaseSchema) -> list[APIOperation]:
    """Every operation of the document (one that schemathesis cannot read fails here)."""
    found = [operation for path in schema for operation in schema[path].values()]
    assert found, "the schema lists no operations"
    return found


def fuzz(
    operation: APIOperation,
    check: Callable[[Case], None],
    *,
    headers: dict[str, str] | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> None:
    """Run `check` on requests for `operation` generated from the schema: up to
    `max_examples` valid ones, then as many invalid ones if the operation takes any input.
    `headers` are sent as they are."""
    fixed = {name.lower() for name in headers or {}}
    takes_input = bool(operation.body) or any(
        parameter.name.lower() not in fixed for parameter in operation.iter_parameters()
    )
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if takes_input else [])
    for mode in modes:

        @hypothesis.settings(
            max_examples=max_examples,
            deadline=None,  # a chat turn takes a moment; its time is not what is tested
            derandomize=True,  # the same requests on every run
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=operation.as_strategy(mode, headers=headers))
        def run(case: Case) -> None:
            check(case)

        run()


# --- With a key that may do everything ---------------------------------------------------------


def test_every_operation_answers_as_documented(
    fuzz_api: Api, schema: BaseSchema, subtests: pytest.Subtests, tmp_path: Path
) -> None:
    """schemathesis' own runner, as `st run` is used by hand: its coverage phase (each
    field's edge cases: both booleans, empty and over-long strings, missing fields, other
    methods) and its fuzzing phase, valid and invalid data, against every operation. Its
    JUnit report gives one subtest per operation, with schemathesis' account of a failure
    (the check, the response, a curl command that reproduces it; the key is filtered).

    The runner rather than `schemathesis.pytest.from_fixture`: that loader sets pytest's
    `Function._nodeid`, which pytest 9 no longer has, and the Python API's strategies have
    no coverage phase."""
    junit = tmp_path / "junit.xml"
    # Run from an empty directory: no schemathesis.toml is picked up, nothing is written here.
    result = subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", fuzz_api.url("/openapi.json"),
            "--header", f"Authorization: Bearer {fuzz_api.keys['every']}",
            "--checks", ",".join(check.__name__ for check in CHECKS),
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES),
            # The same requests every run (no example database): deterministic, and the seed
            # fixes what each operation's generator starts from.
            "--generation-deterministic", "--seed", str(SEED),
            "--continue-on-failure",  # every distinct failure of an operation, not the first
            "--request-timeout", "30", "--workers", "1", "--no-color",
            "--report", "junit", "--report-junit-path", str(junit),
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert junit.exists(), result.stdout + result.stderr
    report = ElementTree.parse(junit)  # noqa: S314 (written by the run above, not untrusted)
    reported = {case.get("name", ""): case for case in report.getroot().iter("testcase")}
    # Every operation the document lists was tested; none skipped or lost.
    assert set(reported) == {operation.label for operation in operations(schema)}, result.stdout
    failed = False
    for label, case in sorted(reported.items()):
        with subtests.test(msg=label):
            problems = [*case.iter("failure"), *case.iter("error"), *case.iter("skipped")]
            failed = failed or bool(problems)
            if problems:
                details = [problem.text or problem.get("message") or "" for problem in problems]
                pytest.fail("\n\n".join(details), pytrace=False)
    # A failure outside any operation (the run itself) is in the output's summary.
    assert result.returncode == 0 or failed, result.stdout[-5000:]


def test_a_stored_conversation_matches_its_documented_shape(
    fuzz_api: Api, schema: BaseSchema
) -> None:
    """Random ids only ever find nothing (404): the detail of a real conversation, with a
    user message and a finished reply, is checked against the schema too."""
    status, _, sent = fuzz_api.call("POST", "/chat", {"message": "Check my shape"}, key="every")
    assert status == 200, sent
    operation = schema["/api/v1/conversations/{conversation_id}"]["GET"]
    case = operation.Case(
        path_parameters={"conversation_id": sent["conversation_id"]},
        headers={"Authorization": f"Bearer {fuzz_api.keys['every']}"},
    )
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 200
    assert [m["role"] for m in response.json()["messages"]] == ["user", "assistant"]


def test_a_streamed_chat_answers_as_documented(fuzz_api: Api, schema: BaseSchema) -> None:
    """`stream: true` with a message that is accepted: generated bodies reach it only by
    luck (a random model or conversation id is refused first), so it is sent as such."""
    case = schema["/api/v1/chat"]["POST"].Case(
        body={"message": "Stream this", "stream": True},
        headers={"Authorization": f"Bearer {fuzz_api.keys['every']}"},
        media_type="application/json",
    )
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 200
    assert "event: done" in response.text


HALF_A_PAIR = "half a pair \ud800"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat", {"message": HALF_A_PAIR}),
        ("/chat", {"message": "hello", "model": HALF_A_PAIR}),
        ("/chat", {"message": "hello", "system_prompt": HALF_A_PAIR}),
        ("/conversations", {"message": HALF_A_PAIR}),
        ("/conversations", {"title": HALF_A_PAIR}),
    ],
    ids=["chat message", "chat model", "chat system_prompt", "new message", "new title"],
)
def test_a_string_that_is_not_unicode_is_refused_not_a_server_error(
    fuzz_api: Api, schema: BaseSchema, path: str, body: dict[str, Any]
) -> None:
    """JSON can escape half of a surrogate pair ("\\ud800"), which no UTF-8 text holds and so
    no generator produces: the string fields still answer in the documented way, never 5xx."""
    case = schema[f"/api/v1{path}"]["POST"].Case(
        body=body,
        headers={"Authorization": f"Bearer {fuzz_api.keys['every']}"},
        media_type="application/json",
    )
    response = requests.post(
        fuzz_api.url(path),
        data=json.dumps(body).encode(),  # ASCII: the half pair escaped as \\ud800
        headers={**case.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 422, (response.status_code, response.text)
    assert_error(response.json(), "invalid")
    case.validate_response(response, checks=CHECKS)


# --- Without a valid key -----------------------------------------------------------------------

# Each way of not presenting a valid key, and the code the refusal must carry.
BAD_CREDENTIALS = [
    (None, "missing_key"),
    ("Basic YWxpY2U6eC1wdy0x", "missing_key"),
    ("Bearer ", "missing_key"),
    ("Bearer eai_nope", "invalid_key"),
    (f"Bearer {UNKNOWN_KEY}", "invalid_key"),
    ("revoked", "revoked_key"),
]


@pytest.mark.parametrize(("authorization", "code"), BAD_CREDENTIALS)
def test_every_operation_refuses_a_missing_or_invalid_key_with_401(
    fuzz_api: Api,
    schema: BaseSchema,
    subtests: pytest.Subtests,
    authorization: str | None,
    code: str,
) -> None:
    """Whatever the request, valid or not, the key is checked first: a 401 in the documented
    error shape, with WWW-Authenticate."""
    if authorization == "revoked":
        authorization = f"Bearer {fuzz_api.keys['revoked']}"
    headers = {} if authorization is None else {"Authorization": authorization}

    def refused(case: Case) -> None:
        if authorization is None and case.headers:  # nothing generated in its place either
            case.headers.pop("Authorization", None)
        response = case.call()
        assert response.status_code == 401, (response.status_code, response.text)
        assert response.headers.get("www-authenticate", [""])[0].startswith("Bearer")
        assert_error(response.json(), code)
        case.validate_response(response, checks=CHECKS)

    for operation in operations(schema):
        with subtests.test(msg=operation.label):
            fuzz(operation, refused, headers=headers or None, max_examples=5)
