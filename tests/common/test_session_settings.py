"""The one settings schema: its rules, and that every place that knows the settings takes them from it."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from haloweave.tracker.v1 import tracker_pb2

from scripts import settings_docs
from services.common import session_settings
from services.common.errors import InvalidArgument
from services.common.session_settings import SessionSettings
from services.gateway import rest, settings_codec, settings_schema
from services.inference.conversation import SAMPLING_FIELDS
from services.inference.engine import CAPTURE_MODES
from services.tracker import convert
from services.tracker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NAMES = tuple(SessionSettings.model_fields)


def _openapi() -> dict[str, Any]:
    """The OpenAPI document of the gateway's real settings routes."""
    app = FastAPI()
    app.include_router(rest.router)
    app.include_router(settings_schema.router)
    return app.openapi()


def test_every_setting_is_documented_bounded_and_placed() -> None:
    schema = session_settings.json_schema()
    for name, spec in schema["properties"].items():
        assert spec.get("title") and spec.get("description"), name
        assert spec.get("x-group") in {"Generation", "Attention", "Distance weighting", "Pruning"}, name
        assert "default" in spec, name
        if spec.get("type") in ("integer", "number"):
            assert "minimum" in spec or "exclusiveMinimum" in spec, name  # no setting may go negative unchecked
        if spec.get("type") == "integer":
            assert "maximum" in spec, name  # JSON integers have no bound of their own
        if spec.get("type") == "string":
            assert spec.get("enum"), name  # every string setting is a choice (a Literal)
    assert SessionSettings().to_dict() == {name: spec["default"] for name, spec in schema["properties"].items()}


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        ({"aggregation": "median"}, "aggregation"),
        ({"distance_mode": "cubic"}, "distance_mode"),
        ({"decay_mode": "sometimes"}, "decay_mode"),
        ({"prune_mode": "later"}, "prune_mode"),
        ({"prune_policy": "lru"}, "prune_policy"),
        ({"min_distance": -1}, "min_distance"),
        ({"min_distance": 1.5}, "min_distance"),
        ({"distance_scale": 1e-7}, "distance_scale"),
        ({"distance_scale": math.inf}, "distance_scale"),
        ({"decay_rate": -0.1}, "decay_rate"),
        ({"decay_rate": math.nan}, "decay_rate"),
        ({"decay_mode": "exponential", "decay_rate": 1.5}, "decay_rate"),  # (1 - r) would flip the signs
        ({"boost": 1e6 * 2}, "boost"),
        ({"initial_score": -1}, "initial_score"),
        ({"max_context_tokens": -1}, "max_context_tokens"),
        ({"recall": 1}, "recall"),
        ({"recall_max_sentences": 0}, "recall_max_sentences"),
        ({"recall_max_sentences": 65}, "recall_max_sentences"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": 8193}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.01}, "top_p"),
        ({"seed": 2**63}, "seed"),
        ({"seed": True}, "seed"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"stop": "x"}, "stop"),
    ],
)
def test_each_rule_refuses_naming_the_setting(bad: dict[str, Any], named: str) -> None:
    current = Settings()
    with pytest.raises(InvalidArgument, match=rf"^settings\.{named}\b"):
        current.updated(bad)
    assert current == Settings()  # nothing changed


def test_the_bounds_themselves_are_accepted_and_an_update_is_checked_as_a_whole() -> None:
    edge = Settings().updated(
        {"top_p": 1, "decay_mode": "exponential", "decay_rate": 1, "boost": 1e6, "seed": -(2**63), "stop": ["x"] * 16}
    )
    assert (edge.top_p, edge.decay_rate, edge.stop) == (1.0, 1.0, ("x",) * 16)
    # decay_rate 2 is fine while decay is additive, and then switching to exponential is refused.
    additive = Settings().updated({"decay_rate": 2})
    with pytest.raises(InvalidArgument, match=r"settings\.decay_rate: 2\.0 must be <= 1 with exponential decay"):
        additive.updated({"decay_mode": "exponential"})
    with pytest.raises(InvalidArgument, match="unknown settings field"):
        Settings().updated({"warp_speed": 9})


def test_a_session_s_stored_settings_are_parsed_once() -> None:
    # The tracker reads a session's settings back from Redis at every step: the text is parsed and validated once.
    raw = Settings().updated({"boost": 2}).to_json()
    assert Settings.from_json(raw) is Settings.from_json(raw.encode())
    assert Settings.from_json(raw).boost == 2.0


def test_the_gateway_refuses_per_field_before_sending_and_both_ends_read_one_json_object() -> None:
    message = settings_codec.to_pb({"top_p": 0.5, "stop": ["."], "clear_stop": False})
    assert json.loads(message.json) == {"top_p": 0.5, "stop": ["."]}
    assert convert.settings_changes_from_pb(message) == {"top_p": 0.5, "stop": ["."]}
    assert settings_codec.to_pb({}).json == ""  # no change
    for bad in [{"top_p": 0}, {"boost": None}, {"boost": "1"}, {"warp_speed": 9}, [1], "{}"]:
        with pytest.raises(InvalidArgument):
            settings_codec.to_pb(bad)
    # What reaches the tracker by another way is checked there too.
    for raw in ['{"top_p": 0}', '{"warp_speed": 9}', '{"boost": NaN}', "[1]", "{"]:
        with pytest.raises(InvalidArgument):
            convert.settings_changes_from_pb(tracker_pb2.Settings(json=raw))


def test_every_list_of_settings_is_the_schema() -> None:
    """The gateway's accepted names, the tracker's, the JSON schema served to the UI, the OpenAPI request and answer
    schemas, the OpenAI mapping and the worker's modes and sampling fields all come from SessionSettings."""
    assert tuple(Settings.model_fields) == NAMES
    assert settings_codec.field_names() == (*NAMES, *session_settings.UPDATE_ONLY)
    assert tuple(session_settings.json_schema()["properties"]) == NAMES
    openapi = _openapi()
    put = openapi["paths"]["/v1/sessions/{session_id}/settings"]["put"]
    request = put["requestBody"]["content"]["application/json"]["schema"]
    assert tuple(request["properties"]) == (*NAMES, *session_settings.UPDATE_ONLY)
    assert request["additionalProperties"] is False
    for name in NAMES:  # the same bounds as the schema's, none of them repeated by hand
        served = {k: v for k, v in session_settings.json_schema()["properties"][name].items() if k != "default"}
        assert request["properties"][name] == served, name
    answer = openapi["paths"]["/v1/sessions/{session_id}/settings"]["get"]["responses"]["200"]
    ref = answer["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert tuple(openapi["components"]["schemas"][ref]["properties"]) == NAMES
    assert "/v1/settings/schema" in openapi["paths"]
    assert session_settings.openai_parameters() == {
        "temperature": "temperature",
        "top_p": "top_p",
        "seed": "seed",
        "stop": "stop",
        "max_tokens": "max_new_tokens",
        "max_completion_tokens": "max_new_tokens",
    }
    assert set(session_settings.openai_parameters().values()) <= set(NAMES)
    assert set(SAMPLING_FIELDS) <= set(NAMES)
    assert typing.get_args(SessionSettings.model_fields["aggregation"].annotation) == CAPTURE_MODES


def test_the_docs_settings_table_is_current() -> None:
    text = settings_docs.DOC.read_text()
    assert text == settings_docs.rendered(text), "docs/websocket.md is stale: run python scripts/settings_docs.py"
    for name in NAMES:
        assert f"| `{name}` |" in text


# A setting added in one place, the schema's source: the rest must take it up with no other edit.
NEW_FIELD = """
    lookahead: int = Field(
        2,
        ge=1,
        le=9,
        title="Lookahead",
        description="A setting added only in the schema.",
        json_schema_extra=_meta("Generation", 1, ("lookahead_tokens",)),
    )
"""

CHECK = """
import json
from fastapi import FastAPI
from services.common import session_settings
from services.common.errors import InvalidArgument
from services.gateway import rest, rest_models, settings_codec, settings_schema
from services.tracker import convert
from services.tracker.settings import Settings

message = settings_codec.to_pb({"lookahead": 3})  # the gateway takes it
assert json.loads(message.json) == {"lookahead": 3}
try:
    settings_codec.to_pb({"lookahead": 10})
except InvalidArgument as error:
    assert "settings.lookahead" in str(error), error
else:
    raise AssertionError("the gateway let lookahead 10 through")
effective = Settings().updated(convert.settings_changes_from_pb(message))  # the tracker takes it
assert (Settings().lookahead, effective.lookahead) == (2, 3)
try:
    Settings().updated({"lookahead": 0})
except InvalidArgument as error:
    assert "settings.lookahead" in str(error), error
else:
    raise AssertionError("the tracker let lookahead 0 through")
assert settings_codec.from_pb(convert.settings_to_pb(effective))["lookahead"] == 3  # and it travels back
app = FastAPI()
app.include_router(rest.router)
app.include_router(settings_schema.router)
openapi = app.openapi()
body = openapi["paths"]["/v1/sessions/{session_id}/settings"]["put"]["requestBody"]["content"]["application/json"]
assert body["schema"]["properties"]["lookahead"]["maximum"] == 9
assert session_settings.json_schema()["properties"]["lookahead"]["x-group"] == "Generation"
assert "lookahead" in rest_models.Settings.model_fields
assert session_settings.openai_parameters()["lookahead_tokens"] == "lookahead"
print("ok")
"""


def test_a_setting_added_to_the_schema_flows_everywhere_without_another_edit(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "services", tmp_path / "services", ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "services" / "common" / "session_settings.py"
    text = source.read_text()
    anchor = "    def __init__(self, **data: Any) -> None:\n"
    assert anchor in text
    source.write_text(text.replace(anchor, NEW_FIELD.lstrip("\n") + "\n" + anchor, 1))
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
