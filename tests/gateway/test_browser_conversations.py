"""The conversation list of the web UI in real headless Chromium against the whole running system: two
conversations, switching between them (reconnect with the stored token and replay), deleting one (erased on the
server, the other still works), and conversations the server no longer knows leaving the list with a note."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from devstack.stack import Stack
from tests.gateway.test_browser import SHOTS, WAIT_MS, browser, send_and_wait  # noqa: F401 - `browser` is a fixture

pytestmark = pytest.mark.e2e


def connected(page: Any, other_than: str | None = None) -> dict[str, str]:
    """Waits for the page's connection (to a session other than `other_than`); returns its session."""
    page.wait_for_function(
        """(other) => document.getElementById('status').textContent.startsWith('Connected: ')
                      && window.haloweave.client.session && window.haloweave.client.session.session_id !== other""",
        arg=other_than,
        timeout=WAIT_MS,
    )
    session: dict[str, str] = page.evaluate("() => window.haloweave.client.session")
    return session


def short_replies(stack: Stack, session: dict[str, str]) -> None:
    url = f"{stack.gateway_url}/v1/sessions/{session['session_id']}/settings"
    reply = httpx.put(url, headers=bearer(session), json={"max_new_tokens": 4, "temperature": 0}, timeout=30)
    assert reply.status_code == 200, reply.text


def bearer(session: dict[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {session['token']}"}


def exists_on_server(stack: Stack, session: dict[str, str]) -> bool:
    url = f"{stack.gateway_url}/v1/sessions/{session['session_id']}/export"
    status = httpx.get(url, headers=bearer(session), timeout=30).status_code
    assert status in (200, 404), status
    return status == 200


def listed(page: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = page.evaluate(
        """() => [...document.querySelectorAll('#conversation-list li')].map(li => ({
                session_id: li.dataset.session, current: li.classList.contains('current'),
                title: li.querySelector('.conversation-title').textContent,
                used: li.querySelector('.muted').textContent}))"""
    )
    return rows


def item(session: dict[str, str], part: str) -> str:
    return f"#conversation-list li[data-session='{session['session_id']}'] .{part}"


def delete_in_page(page: Any, session: dict[str, str]) -> None:
    page.once("dialog", lambda dialog: dialog.accept())
    page.click(item(session, "conversation-delete"))
    page.wait_for_function(
        "(sid) => !document.querySelector(`#conversation-list li[data-session='${sid}']`)",
        arg=session["session_id"],
        timeout=WAIT_MS,
    )


def erase_elsewhere(stack: Stack, session: dict[str, str]) -> None:
    """As another browser holding the token would."""
    url = f"{stack.gateway_url}/v1/sessions/{session['session_id']}"
    reply = httpx.delete(url, headers=bearer(session), timeout=120)
    assert reply.status_code == 200, reply.text


def test_conversations_are_listed_switched_and_deleted(stack: Stack, browser: Any) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(stack.gateway_url)
        first = connected(page)
        short_replies(stack, first)
        send_and_wait(page, "My dog is called Rex.")
        assert [(r["session_id"], r["title"], r["current"]) for r in listed(page)] == [
            (first["session_id"], "My dog is called Rex.", True)
        ]
        assert listed(page)[0]["used"].startswith("just now")

        page.click("#btn-new")
        second = connected(page, other_than=first["session_id"])
        short_replies(stack, second)
        send_and_wait(page, "The sky is green today.")
        rows = listed(page)
        assert [r["session_id"] for r in rows] == [second["session_id"], first["session_id"]]  # last used first
        assert [r["current"] for r in rows] == [True, False]
        assert rows[0]["title"] == "The sky is green today."
        page.screenshot(path=str(SHOTS / "conversations-01-two.png"))

        # Switching reconnects with the stored token and replays the first conversation from its start.
        page.click(item(first, "conversation-open"))
        assert connected(page, other_than=second["session_id"])["session_id"] == first["session_id"]
        page.wait_for_function("() => document.getElementById('transcript').textContent.includes('Rex')")
        assert "sky is green" not in (page.text_content("#transcript") or "")
        assert listed(page)[0]["session_id"] == first["session_id"] and listed(page)[0]["current"]

        # Deleting the other one erases it on the server; this one goes on.
        delete_in_page(page, second)
        assert "deleted" in (page.text_content("#conversation-note") or "")
        assert not exists_on_server(stack, second)
        assert exists_on_server(stack, first)
        send_and_wait(page, "What is my dog called?")
        page.screenshot(path=str(SHOTS / "conversations-02-deleted.png"))

        # A conversation erased elsewhere while on screen: it leaves the list with a note, the page opens the other.
        page.click("#btn-new")
        third = connected(page, other_than=first["session_id"])
        page.wait_for_selector(item(third, "conversation-open"))
        erase_elsewhere(stack, third)
        page.wait_for_function(
            "() => document.getElementById('conversation-note').textContent.includes('no longer on the server')",
            timeout=WAIT_MS,
        )
        assert connected(page, other_than=third["session_id"])["session_id"] == first["session_id"]
        assert [r["session_id"] for r in listed(page)] == [first["session_id"]]

        # One the server no longer knows, deleted from the list: the 404 is taken as done, with a note.
        page.click("#btn-new")
        fourth = connected(page, other_than=first["session_id"])
        page.wait_for_selector(item(fourth, "conversation-open"))
        erase_elsewhere(stack, first)
        delete_in_page(page, first)
        assert "already gone on the server" in (page.text_content("#conversation-note") or "")
        assert [r["session_id"] for r in listed(page)] == [fourth["session_id"]]
        assert page.evaluate("() => window.haloweave.client.session.session_id") == fourth["session_id"]
        page.screenshot(path=str(SHOTS / "conversations-03-gone.png"))
        assert not errors, errors
    finally:
        context.close()
