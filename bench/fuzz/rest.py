"""Fuzzing the gateway's REST API against its own OpenAPI schema, with schemathesis.

The schema is read from the running gateway (`/openapi.json`), and schemathesis generates requests for every operation:
positive (what the schema allows) and negative (what it forbids), first with generated session ids and tokens, then
with the real session id and token of a watched session so that the requests get past authorisation. Every answer is
checked by schemathesis's own checks: not a server error, a documented status code, a documented content type, and a
body that matches the schema declared for its status.

Some answers are 5xx by design in this stack, which runs no inference worker: `POST .../snapshots` (and a restore of a
well-formed id) wait for a worker and answer `504 timeout`, `/readyz` answers 503 because the workers' health does not
answer, and the OpenAI-compatible routes answer a request with a valid API key `503 unavailable` (in OpenAI's error
format), since no worker names the served model. For those (and only those) the server-error check is replaced by one
that holds them to exactly that documented answer.

A refused request on the watched session must leave its Redis keys byte-identical, and no refused restore may queue
a job (nothing path-like reaches a worker or the store).
"""

from __future__ import annotations

from typing import Any

import requests
import schemathesis
from hypothesis import reject
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bench.fuzz.tally import Crash, Tally, Verdict
from bench.fuzz.target import EVENT_KEYS, Target, differences, dump_session
from bench.fuzz.websocket import Victim as Owner
from services.common import keys

CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
TIMEOUT_S = 30.0


def load_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(f"{target.http_url}/openapi.json", wait_for_schema=30)


def operations(schema: Any, owner: Owner) -> dict[str, st.SearchStrategy[Case]]:
    """For each operation: its cases, positive and negative, with generated credentials and with the owner's."""
    found = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        takes_session = any(p.name == "session_id" for p in operation.path_parameters)
        strategies = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategies.append(operation.as_strategy(generation_mode=mode))
            if takes_session:
                strategies.append(
                    operation.as_strategy(
                        generation_mode=mode,
                        path_parameters={"session_id": owner.session_id},
                        headers={"authorization": f"Bearer {owner.token}"},
                    )
                )
        found[operation.label] = st.one_of(strategies)
    return found


class RestFuzzer:
    name = "rest"

    def __init__(self, target: Target, owner: Owner, tally: Tally | None = None) -> None:
        self.target = target
        self.owner = owner
        self.tally = tally or Tally(self.name)
        self.http = requests.Session()
        self.redis = target.redis()
        self._baseline = self._picture()

    def close(self) -> None:
        self.http.close()
        self.redis.close()

    def _picture(self) -> dict[bytes, Any]:
        return dump_session(self.redis, self.owner.session_id, skip=EVENT_KEYS)

    def run(self, case: Case) -> Verdict:
        try:
            verdict = self._run(case)
        except Crash as crash:
            self.tally.add(Verdict.CRASH, str(crash))
            raise
        self.tally.add(verdict)
        return verdict

    def _run(self, case: Case) -> Verdict:
        jobs_before = self.redis.xlen(keys.JOBS_STREAM)
        try:
            response = case.call(base_url=self.target.http_url, session=self.http, timeout=TIMEOUT_S)
        except requests.exceptions.ConnectionError as error:
            raise Crash(f"{_label(case)}: the gateway did not answer: {error}") from None
        except requests.exceptions.Timeout:
            raise Crash(f"{_label(case)}: no answer within {TIMEOUT_S:g} s") from None
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
            reject()  # a request the HTTP client itself cannot send: not an input the gateway ever sees
        status = response.status_code
        by_design = self._designed_server_error(case, response)
        checks = CHECKS if by_design else [*CHECKS, not_a_server_error]
        try:
            case.validate_response(response, checks=checks)
        except FailureGroup as failures:
            raise Crash(f"{_label(case)} answered {status}: {failures}") from None
        if status >= 500 and not by_design:
            raise Crash(f"{_label(case)} answered {status}: {response.text[:300]}")
        self._check_state(case, response, jobs_before)
        if status < 400:
            return Verdict.ACCEPTED
        return Verdict.REFUSED

    def _designed_server_error(self, case: Case, response: requests.Response) -> bool:
        """Whether a 5xx is one of the answers this worker-less stack gives by design, exactly as documented."""
        status, path, method = response.status_code, case.operation.path, case.method.upper()
        if status == 504 and method == "POST" and path.startswith("/v1/sessions/{session_id}/snapshots"):
            body = _json(response)
            return isinstance(body, dict) and body.get("code") == "timeout" and bool(body.get("message"))
        if status == 503 and method == "DELETE" and path == "/v1/sessions/{session_id}":
            # Erasing a session needs every worker to let go of it; with none it is refused and nothing changes.
            body = _json(response)
            return isinstance(body, dict) and body.get("code") == "unavailable" and bool(body.get("message"))
        if status == 503 and path in ("/v1/chat/completions", "/v1/models"):
            # The OpenAI routes need a worker to name the served model; with none they refuse, in OpenAI's format.
            body = _json(response)
            error = body.get("error") if isinstance(body, dict) else None
            return isinstance(error, dict) and error.get("code") == "unavailable" and bool(error.get("message"))
        if status == 503 and path == "/readyz":
            body = _json(response)
            checks = body.get("checks") if isinstance(body, dict) else None
            return body.get("ready") is False and checks == {
                "redis": True,
                "tracker": True,
                "snapshot": True,
                "inference": False,
            }
        return False

    def _check_state(self, case: Case, response: requests.Response, jobs_before: int) -> None:
        dead = self.target.dead()
        if dead:
            raise Crash(f"services died: {dead}")
        picture = self._picture()
        ours = (case.path_parameters or {}).get("session_id") == self.owner.session_id
        if ours and response.status_code == 200 and case.method.upper() == "PUT":
            self._baseline = picture  # an accepted settings change
            return
        changed = differences(self._baseline, picture)
        if changed:
            raise Crash(f"{_label(case)} answered {response.status_code} and changed the session: {changed}")
        queued = self.redis.xlen(keys.JOBS_STREAM) - jobs_before
        allowed = 1 if response.status_code == 504 else 0  # only a job that waited for its worker was queued
        if queued != allowed:
            raise Crash(f"{_label(case)} answered {response.status_code} and queued {queued} job(s)")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _label(case: Case) -> str:
    path = case.formatted_path if hasattr(case, "formatted_path") else case.path
    body = case.body if not isinstance(case.body, str | bytes) or len(case.body) < 200 else f"<{len(case.body)}>"
    return f"{case.method.upper()} {path} headers={case.headers} body={body!r}"
