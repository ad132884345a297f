"""The web UI in real headless Chromium against the whole running system (real model, real services).

Each step waits on a condition in the page, never a fixed sleep. Screenshots land in test-artifacts/browser/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.stack import Stack

playwright_api = pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WAIT_MS = 180_000  # a reply on a busy 2-core machine; conditions usually hold far sooner


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("Debian chromium is not installed (scripts/apt-packages-test.txt: make setup-test)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def set_field(page: object, name: str, value: str) -> None:
    """Types into a settings field and leaves it, which fires `change` like a person would."""
    field = page.locator(f"#set-{name}")  # type: ignore[attr-defined]
    field.fill(value)
    field.press("Tab")


def server_setting(stack: Stack, page: object, name: str, expected: object) -> object:
    """The page's session's setting as the REST API reports it, once it is `expected` (polled: the change travels
    through the WebSocket and the tracker), or its last value after ten seconds."""
    session = page.evaluate("() => window.haloweave.client.session")  # type: ignore[attr-defined]
    headers = {"Authorization": f"Bearer {session['token']}"}
    url = f"{stack.gateway_url}/v1/sessions/{session['session_id']}/settings"
    for _ in range(100):
        value = httpx.get(url, headers=headers, timeout=10).json()[name]
        if value == expected:
            return value
        page.wait_for_timeout(100)  # type: ignore[attr-defined]  # polling for the change, not a timed assertion
    return httpx.get(url, headers=headers, timeout=10).json()[name]


def send_and_wait(page: object, text: str) -> None:
    page.evaluate("() => { window.haloweave.state.lastStats = null; }")  # type: ignore[attr-defined]
    page.fill("#input", text)  # type: ignore[attr-defined]
    page.press("#input", "Enter")  # type: ignore[attr-defined]
    page.wait_for_function("() => window.haloweave.state.generating === true", timeout=WAIT_MS)  # type: ignore[attr-defined]
    # The reply ends with `done` (stats recorded) or an error frame; both clear `generating`.
    page.wait_for_function("() => window.haloweave.state.generating === false", timeout=WAIT_MS)  # type: ignore[attr-defined]
    stats = page.evaluate("() => window.haloweave.state.lastStats")  # type: ignore[attr-defined]
    assert stats is not None, page.text_content("#toast")  # type: ignore[attr-defined]


def test_chat_page_end_to_end(stack: Stack, browser: object) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(stack.gateway_url)
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        status = page.text_content("#status")
        assert "smollm2" in (status or "").lower(), status
        # The system prompt is replayed into the transcript as dimmed template tokens plus its text.
        page.wait_for_selector(".turn[data-role=system] .tok:not(.special)")

        # Settings from the panel are applied to the session and kept in the browser.
        page.click("#btn-settings")
        set_field(page, "max_new_tokens", "6")
        set_field(page, "temperature", "0")
        session = page.evaluate("() => window.haloweave.client.session")
        page.wait_for_function("() => document.getElementById('set-max_new_tokens').value === '6'")
        assert server_setting(stack, page, "max_new_tokens", 6) == 6
        assert json.loads(page.evaluate("() => localStorage.getItem('haloweave.settings')"))["max_new_tokens"] == 6

        # Chat: the reply streams in as token spans, coloured by brightness.
        send_and_wait(page, "My cat is called Tom. What is my cat called?")
        stats = page.evaluate("() => window.haloweave.state.lastStats")
        assert 1 <= stats["tokens"] <= 6, stats  # the setting took effect
        assert page.locator(".turn[data-role=assistant] .tok").count() >= 3
        glowing = page.evaluate(
            """() => [...document.querySelectorAll('.tok:not(.special)')]
                 .filter(s => { const a = getComputedStyle(s).backgroundColor.match(/[\\d.]+/g);
                                return a && a.length === 4 && Number(a[3]) > 0.05; }).length"""
        )
        assert glowing > 0, "some tokens glow"
        page.screenshot(path=str(SHOTS / "01-reply.png"))

        # Tooltip with the dictionary fields of the hovered token.
        page.hover(".turn[data-role=user] .tok:not(.special) >> nth=2")
        page.wait_for_selector("#tooltip:not([hidden])")
        tip = page.text_content("#tooltip") or ""
        for field in ("position", "token_id", "score", "turn_id", "sentence_id", "role"):
            assert field in tip
        page.screenshot(path=str(SHOTS / "02-tooltip.png"))

        # Log scale is a class on the body: one style change, no per-token work.
        page.check("#opt-log")
        assert page.evaluate("() => document.body.classList.contains('log-scale')")

        # A small token budget forces pruning of the first turn during the next reply: its spans flash and fade. The
        # smallest one allowed is what is never pruned now: everything but the reply.
        active = page.evaluate("() => window.haloweave.transcript.active")
        budget = active - page.locator(".turn[data-role=assistant] .tok").count()
        set_field(page, "max_context_tokens", str(budget))
        page.wait_for_function(f"() => window.haloweave.state.budget === {budget}")
        send_and_wait(page, "And what colour is the sky?")
        page.wait_for_selector(".tok.pruned", state="attached")
        pruned = page.evaluate("() => window.haloweave.transcript.pruned")
        assert pruned > 0
        assert f"{pruned} pruned" == page.text_content("#meter-pruned")
        page.screenshot(path=str(SHOTS / "03-pruned.png"))

        # Export downloads the whole dictionary, pruned tokens included.
        with page.expect_download() as download:
            page.click("#btn-export")
        exported = json.loads(Path(download.value.path()).read_text())
        assert sum(1 for t in exported["tokens"] if t["deleted"]) == pruned

        # Reload: the page resumes the same session and rebuilds the same transcript from the replay.
        shown = page.evaluate("() => window.haloweave.transcript.tokens.size")
        page.reload()
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        page.wait_for_function(f"() => window.haloweave.transcript.tokens.size === {shown}")
        assert page.evaluate("() => window.haloweave.client.session.session_id") == session["session_id"]
        assert "smollm2" in (page.text_content("#status") or "").lower()
        assert page.evaluate("() => window.haloweave.transcript.pruned") == pruned
        assert page.is_checked("#opt-log")  # the toggle is remembered too
        page.screenshot(path=str(SHOTS / "04-reloaded.png"))

        # Snapshots: save one, see it listed, restore it; the transcript is redrawn from the restored dictionary.
        page.click("#btn-snapshots")
        page.click("#btn-snapshot-save")
        page.wait_for_function(
            "() => document.getElementById('snapshot-msg').textContent.startsWith('saved ')", timeout=WAIT_MS
        )
        page.wait_for_selector("#snapshot-list li button")
        page.click("#snapshot-list li button >> nth=0")
        page.wait_for_function(
            "() => document.getElementById('snapshot-msg').textContent.startsWith('restored ')", timeout=WAIT_MS
        )
        page.wait_for_function(f"() => window.haloweave.transcript.tokens.size === {shown}")
        assert page.evaluate("() => window.haloweave.transcript.pruned") == pruned
        page.screenshot(path=str(SHOTS / "05-snapshots.png"))
        page.click("#btn-snapshots")

        # The per-layer, per-head view draws an `attention` frame (fp16 [layers, heads, ctx], base64) as a heat map.
        page.evaluate(
            """() => {
                const layers = 2, heads = 3, ctx = 4, halves = new Uint16Array(layers * heads * ctx);
                halves.forEach((_, i) => { halves[i] = 0x3800 + (i % ctx) * 0x100; });  // 0.5 .. ~1.0
                const data = btoa(String.fromCharCode(...new Uint8Array(halves.buffer)));
                window.haloweave.client.onFrame({type: 'attention', event_id: 0, step: 7, layers, heads,
                                                 positions: [0, 1, 2, 3], data});
            }"""
        )
        page.wait_for_selector("#heads:not([hidden])")
        assert page.text_content("#heads-info") == "step 7: 2 layers × 3 heads over 4 positions"
        assert page.evaluate(
            "() => [document.getElementById('heads-canvas').width, document.getElementById('heads-canvas').height]"
        ) == [4, 6]
        assert not errors, errors
    finally:
        context.close()


def test_full_mode_streams_the_heads_view(stack: Stack, browser: object) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(stack.gateway_url)
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        page.click("#btn-settings")
        set_field(page, "max_new_tokens", "4")
        page.select_option("#set-aggregation", "full")
        page.wait_for_function("() => window.haloweave.state.budget !== undefined")
        page.wait_for_function("() => document.getElementById('set-aggregation').value === 'full'")
        send_and_wait(page, "Hi!")
        page.wait_for_selector("#heads:not([hidden])", timeout=10_000)  # its frames came before `done`
        assert "layers" in (page.text_content("#heads-info") or "")
        page.screenshot(path=str(SHOTS / "06-heads.png"))
    finally:
        context.close()


def test_a_4k_token_transcript_is_updated_in_place(stack: Stack, browser: object) -> None:
    """Brightness at 4k tokens changes the spans it names; it never rebuilds the transcript."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(stack.gateway_url)
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        # Frames fed through the page's own frame handler (positions far beyond the session's, turn 999).
        page.evaluate(
            """() => {
                const c = window.haloweave.client;
                for (let i = 0; i < 4000; i++) {
                    c.onFrame({type: 'token', event_id: 0, position: 100000 + i, token: i % 12 ? ' word' : '.\\n',
                               token_id: 1, role: 'assistant', turn_id: 999, sentence_id: Math.floor(i / 12),
                               score: 0});
                }
                document.querySelector('[data-pos="100000"]').dataset.marker = 'kept';
                const positions = [...Array(4000).keys()].map((i) => 100000 + i);
                c.onFrame({type: 'brightness', event_id: 0, step: 0, turn_id: 999, positions,
                           scores: positions.map((p, i) => (i % 7) / 7)});
                c.onFrame({type: 'pruned', event_id: 0, positions: positions.slice(0, 12), turn_id: 999,
                           sentence_id: 0});
            }"""
        )
        page.wait_for_function(
            "() => document.querySelector('[data-pos=\"100006\"]').style.getPropertyValue('--s') !== '0.00000'"
        )
        assert page.evaluate("() => document.querySelectorAll('.turn[data-turn=\"999\"] .tok').length") == 4000
        assert page.evaluate("() => document.querySelector('[data-pos=\"100000\"]').dataset.marker") == "kept"
        assert (
            page.evaluate("() => document.querySelector('[data-pos=\"100006\"]').style.getPropertyValue('--s')")
            == "0.85714"
        )
        assert page.evaluate("() => document.querySelectorAll('.turn[data-turn=\"999\"] .tok.pruned').length") == 12
        page.screenshot(path=str(SHOTS / "07-4k-tokens.png"))
    finally:
        context.close()


def test_recall_is_a_setting_and_a_recalled_sentence_comes_back_in_the_transcript(
    stack: Stack, browser: object
) -> None:
    """The recall checkbox reaches the session; a `recalled` frame un-prunes its spans with the reverse animation,
    gives them their new scores and puts them back in the meters."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    try:
        page.goto(stack.gateway_url)
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        page.click("#btn-settings")
        page.check("#set-recall")
        assert server_setting(stack, page, "recall", True) is True
        page.evaluate(
            """() => {
                const c = window.haloweave.client;
                for (let i = 0; i < 24; i++) {
                    c.onFrame({type: 'token', event_id: 0, position: 200000 + i, token: i % 12 === 11 ? '.' : ' word',
                               token_id: 1, role: 'user', turn_id: 998, sentence_id: Math.floor(i / 12), score: 0});
                }
                const positions = [...Array(12).keys()].map((i) => 200000 + i);
                c.onFrame({type: 'pruned', event_id: 0, positions, turn_id: 998, sentence_id: 0});
            }"""
        )
        page.wait_for_function("() => document.querySelectorAll('.turn[data-turn=\"998\"] .tok.faded').length === 12")
        pruned_before = page.evaluate("() => window.haloweave.transcript.pruned")
        page.evaluate(
            """() => {
                const positions = [...Array(12).keys()].map((i) => 200000 + i);
                window.haloweave.client.onFrame({type: 'recalled', event_id: 0, positions, turn_id: 998,
                                                 sentence_id: 0, scores: positions.map(() => 0.5)});
            }"""
        )
        assert page.evaluate("() => document.querySelectorAll('.turn[data-turn=\"998\"] .tok.recalled').length") == 12
        page.screenshot(path=str(SHOTS / "08-recalled.png"))
        # The animation ends on the token's own style: nothing pruned or faded is left.
        page.wait_for_function("() => document.querySelectorAll('.turn[data-turn=\"998\"] .tok.recalled').length === 0")
        assert page.evaluate("() => document.querySelectorAll('.turn[data-turn=\"998\"] .tok.pruned').length") == 0
        assert page.evaluate("() => window.haloweave.transcript.pruned") == pruned_before - 12
        score = page.evaluate("() => window.haloweave.transcript.tokens.get(200003).score")
        assert score == 0.5
    finally:
        context.close()


def test_a_reload_after_the_history_was_trimmed_redraws_from_the_export(stack: Stack, browser: object) -> None:
    """The event Stream keeps only its newest events (8 MiB): a page reloaded after its start was trimmed cannot
    rebuild from the replay, and draws the transcript from the export instead."""
    import redis

    from services.common import events, keys

    context = browser.new_context(viewport={"width": 1280, "height": 860})  # type: ignore[attr-defined]
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    client = redis.Redis.from_url(stack.redis_url)
    try:
        page.goto(stack.gateway_url)
        page.wait_for_selector(".turn[data-role=system] .tok:not(.special)")
        session = page.evaluate("() => window.haloweave.client.session")
        shown = page.evaluate("() => window.haloweave.transcript.tokens.size")
        sid = session["session_id"]
        # Brightness events for the session's own positions, appended as the tracker writes them, past the budget.
        positions = list(range(shown))
        bounds = events.limits()
        for step in range(100):  # ~10 KB each, 10 MB in all
            data = {"step": step, "turn_id": 0, "positions": positions * 64, "scores": [step / 100] * (shown * 64)}
            pairs = [part for _ in range(10) for part in events.encode("brightness", data)]
            client.eval(
                events.APPEND_EVENT_LUA, 4, *events.stream_keys(sid), bounds.max_events, bounds.max_bytes, *pairs
            )
        oldest = client.xrange(keys.events_stream(sid), count=1)[0][0]
        assert events.entry_event_id(oldest) > shown, "the prompt's token events were trimmed"

        page.reload()
        page.wait_for_function("() => document.getElementById('status').textContent.startsWith('Connected: ')")
        page.wait_for_function(f"() => window.haloweave.transcript.tokens.size === {shown}", timeout=30_000)
        assert page.locator(".turn[data-role=system] .tok:not(.special)").count() > 0
        # The replayed brightness (the newest events) goes on top of the export, up to the last step's scores.
        page.wait_for_function("() => window.haloweave.transcript.tokens.get(1).score === 0.99", timeout=30_000)
        assert not errors, errors
    finally:
        client.close()
        context.close()
