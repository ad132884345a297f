"""The web UI's settings form in real headless Chromium: it is built from the schema the gateway serves, not from a
list of its own. A gateway and a tracker are enough (no reply is generated)."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from services.common import session_settings
from tests.gateway.conftest import Gateway
from tests.gateway.test_browser import ARGS, CHROMIUM

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (scripts/apt-packages-test.txt: make setup-test)")
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def _form(page: Any) -> list[dict[str, Any]]:
    """Every control of the settings form as the page built it."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => [...document.querySelectorAll('#settings-form fieldset')].flatMap(set =>
             [...set.querySelectorAll('label.field')].map(row => {
               const input = row.querySelector('input, select');
               return {
                 group: set.querySelector('legend').textContent,
                 name: input.name,
                 label: row.querySelector('span').textContent,
                 tooltip: row.title,
                 tag: input.tagName.toLowerCase(),
                 type: input.type,
                 min: input.getAttribute('min'),
                 max: input.getAttribute('max'),
                 options: input.tagName === 'SELECT' ? [...input.options].map(o => o.value) : null,
               };
             }))"""
    )


def test_the_settings_form_is_the_served_schema(gateway: Gateway, browser: Any) -> None:
    served = httpx.get(f"{gateway.url}/v1/settings/schema", timeout=10).json()
    assert served == session_settings.json_schema()  # the gateway serves the one schema as it is
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(gateway.url)
        page.wait_for_selector("#set-recall_max_sentences", state="attached", timeout=WAIT_MS)
        controls = {control["name"]: control for control in _form(page)}
        properties: dict[str, dict[str, Any]] = served["properties"]
        assert list(controls) == list(properties)  # one control per setting, in the schema's order
        for name, spec in properties.items():
            control = controls[name]
            assert control["group"] == spec["x-group"], name
            assert control["label"].startswith(spec["title"]), name
            assert control["tooltip"] == spec["description"], name
            if "enum" in spec:
                assert (control["tag"], control["options"]) == ("select", spec["enum"]), name
            elif spec["type"] == "boolean":
                assert control["type"] == "checkbox", name
            elif spec["type"] == "array":
                assert control["type"] == "text", name
            else:
                assert control["type"] == "number", name
                if "minimum" in spec:
                    assert float(control["min"]) == spec["minimum"], name
                upper = spec.get("maximum", spec.get("x-ui-max"))
                if upper is not None:
                    assert float(control["max"]) == float(upper), name
        assert not errors, errors
    finally:
        page.close()


def test_a_setting_added_to_the_schema_gets_its_control_without_another_edit(gateway: Gateway, browser: Any) -> None:
    """The page is served a schema with one more setting: its control appears, labelled, bounded and grouped as the
    schema says. The gateway, whose own schema lacks it, refuses the change by name (it validates with the schema)."""
    schema = copy.deepcopy(session_settings.json_schema())
    schema["properties"]["lookahead"] = {
        "type": "integer",
        "title": "Lookahead tokens",
        "description": "A setting only this test knows.",
        "minimum": 1,
        "maximum": 9,
        "default": 2,
        "x-group": "Generation",
    }
    page = browser.new_page()
    try:
        page.route(
            "**/v1/settings/schema",
            lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(schema)),
        )
        page.goto(gateway.url)
        page.wait_for_function(
            "() => document.getElementById('status').textContent.startsWith('Connected')", timeout=WAIT_MS
        )
        control = {c["name"]: c for c in _form(page)}["lookahead"]
        assert control["group"] == "Generation" and control["label"] == "Lookahead tokens"
        assert (control["type"], control["min"], control["max"]) == ("number", "1", "9")
        page.click("#btn-settings")
        field = page.locator("#set-lookahead")
        field.fill("3")
        field.press("Tab")
        page.wait_for_function(
            "() => document.getElementById('settings-error').textContent.includes('lookahead')", timeout=WAIT_MS
        )
        assert "unknown setting 'lookahead'" in (page.text_content("#settings-error") or "")
    finally:
        page.close()
