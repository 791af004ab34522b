"""The browser page in Debian's headless Chromium, driven by Playwright, against a real
`eventq serve` process: sign-in, the channels and their live member lists, deactivation
and reactivation from the CLI, a graceful server restart and a lost queue.

Every wait is one of Playwright's auto-waiting `expect` assertions with a timeout; the
one-second timeouts after a CLI command are the page's latency promise. The sync API
runs in plain (non-asyncio) tests, so it never meets pytest-asyncio's event loop.

The browser is never downloaded: the tests use `/usr/bin/chromium` (`.ci/apt-packages`).
Without it a developer's run skips them; under `CI=true` that is a failure.
"""

from __future__ import annotations

import base64
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import ConsoleMessage, Locator, Page, Response, expect, sync_playwright

from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.databases import skip_or_fail
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer, live_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# The page's promise: a committed change shows within a second of the command returning.
LATENCY_MS = 1_000
# Starting the page, reconnecting after a restart: generous, as CI machines are slow.
SLOW_MS = 15_000


# -- the browser ------------------------------------------------------------------------------


def require_chromium() -> str:
    """The browser's path; skip (developer) or fail (CI) when it is not installed."""
    if CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK):
        return str(CHROMIUM)
    skip_or_fail(
        "the browser",
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
    )


@dataclass
class BrowserPage:
    """A page in a fresh browser, and what it logged that a test should never see."""

    page: Page
    problems: list[str] = field(default_factory=list)
    # Every register the server accepted: a new queue, and a rebuilt view.
    registers: list[Response] = field(default_factory=list)

    def assert_no_problems(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def browser_page() -> Iterator[BrowserPage]:
    """One headless Chromium with one page, closed after the test."""
    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1200, "height": 820})
        page = context.new_page()
        page.set_default_timeout(SLOW_MS)
        watched = BrowserPage(page)

        def on_console(message: ConsoleMessage) -> None:
            # CSP refusals are bugs; failed requests while the server is down are not.
            if "Content Security Policy" in message.text:
                watched.problems.append(f"console: {message.text}")

        def on_response(response: Response) -> None:
            if response.url.endswith("/api/v1/register") and response.ok:
                watched.registers.append(response)

        page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
        page.on("console", on_console)
        page.on("response", on_response)
        try:
            yield watched
        finally:
            context.close()
            browser.close()


# -- the server ---------------------------------------------------------------------------------


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- helpers --------------------------------------------------------------------------------------


def eventq(database_url: str, *args: str) -> None:
    """Run one CLI command in another process; it has committed when this returns."""
    result = run_eventq(database_url, *args)
    assert result.returncode == 0, result.stderr


def sign_in(page: Page, email: str, api_key: str) -> None:
    page.locator("#email").fill(email)
    page.locator("#api-key").fill(api_key)
    page.locator("#sign-in-button").click()


def member_names(page: Page, stream_id: int) -> Locator:
    """The names in one channel's member list, in the page's order."""
    return page.locator(f'[data-stream-id="{stream_id}"] [data-user-id] .name')


def rows_of(page: Page, user_id: int) -> Locator:
    """Every member row of `user_id`, in every channel the page shows."""
    return page.locator(f'[data-stream-id] [data-user-id="{user_id}"]')


def expect_initial_lists(page: Page, realm: SampleRealm) -> None:
    """The owner sees the three channels, each with its subscribers Guest and Member."""
    channels = page.locator("#channel-list > [data-stream-id]")
    expect(channels).to_have_count(3, timeout=SLOW_MS)
    expect(channels.locator(".channel-name")).to_have_text(["private", "public", "web-public"])
    for stream_id in realm.streams.values():
        expect(member_names(page, stream_id)).to_have_text(["Guest", "Member"])


# -- tests --------------------------------------------------------------------------------------


def test_page_signs_in_and_follows_deactivation(
    database_url: str, realm: SampleRealm, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    state = page.locator("#connection-state")
    owner_email, owner_key = realm.emails["owner"], realm.api_keys["owner"]
    member = realm.users["member"]
    with live_server(database_url) as server:
        page.goto(server.url + "/")
        expect(state).to_be_visible()
        expect(state).to_have_text("signed out")

        # A wrong key: the server's refusal is shown, and nothing else happens.
        sign_in(page, owner_email, "not-the-key")
        expect(page.locator("#sign-in-error")).to_have_text("Invalid API key")
        expect(state).to_have_text("signed out")

        with page.expect_response(lambda r: r.url.endswith("/api/v1/register")) as registered:
            sign_in(page, owner_email, owner_key)
        expect(state).to_have_text("connected", timeout=SLOW_MS)
        expect_initial_lists(page, realm)

        # The credential travels only as a Basic header: no cookie, no storage, no DOM.
        headers = registered.value.request.all_headers()
        basic = base64.b64encode(f"{owner_email}:{owner_key}".encode()).decode()
        assert headers["authorization"] == f"Basic {basic}"
        assert "cookie" not in headers
        assert page.context.cookies() == []
        assert page.evaluate("() => [sessionStorage.length, localStorage.length]") == [0, 0]
        expect(page.locator("#api-key")).to_have_value("")

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "browser-page.png", full_page=True)

        # Mark the rows that must survive, to show events update rows by key rather
        # than re-rendering whole lists.
        guest_rows = rows_of(page, realm.users["guest"])
        guest_rows.evaluate_all("rows => rows.forEach(row => { row.dataset.probe = 'kept'; })")

        eventq(database_url, "deactivate-user", "zulip", realm.emails["member"])
        expect(rows_of(page, member)).to_have_count(0, timeout=LATENCY_MS)
        person = page.locator(f'[data-person-id="{member}"]')
        expect(person).to_have_attribute("data-active", "false", timeout=LATENCY_MS)
        expect(person.locator(".user-state")).to_have_text("deactivated")
        expect(page.locator('[data-probe="kept"]')).to_have_count(3)

        eventq(database_url, "reactivate-user", "zulip", realm.emails["member"])
        expect(rows_of(page, member)).to_have_count(3, timeout=LATENCY_MS)
        expect(person).to_have_attribute("data-active", "true", timeout=LATENCY_MS)
        expect_initial_lists(page, realm)
        expect(page.locator('[data-probe="kept"]')).to_have_count(3)

        # A new channel and its first subscriber arrive as stream create and peer_add.
        eventq(database_url, "create-stream", "zulip", "announcements")
        new_channel = page.locator("[data-stream-id]", has_text="announcements")
        expect(new_channel).to_have_count(1, timeout=LATENCY_MS)
        expect(new_channel.locator(".relation")).to_have_text("not subscribed")
        eventq(database_url, "subscribe", "zulip", realm.emails["loner"], "announcements")
        expect(new_channel.locator("[data-user-id] .name")).to_have_text(
            ["Loner"], timeout=LATENCY_MS
        )
        eventq(database_url, "subscribe", "zulip", owner_email, "announcements")
        expect(new_channel.locator(".relation")).to_have_text("subscribed", timeout=LATENCY_MS)
        expect(new_channel.locator("[data-user-id] .name")).to_have_text(["Loner", "Owner"])
        eventq(database_url, "unsubscribe", "zulip", realm.emails["loner"], "announcements")
        expect(new_channel.locator("[data-user-id] .name")).to_have_text(
            ["Owner"], timeout=LATENCY_MS
        )

    assert len(browser_page.registers) == 1
    browser_page.assert_no_problems()


def test_page_survives_restart_and_lost_queue(
    database_url: str, realm: SampleRealm, browser_page: BrowserPage
) -> None:
    page = browser_page.page
    state = page.locator("#connection-state")
    member = realm.users["member"]
    server = LiveServer(database_url, port=free_port()).start()
    try:
        page.goto(server.url + "/")
        with page.expect_response(lambda r: r.url.endswith("/api/v1/register")) as registered:
            sign_in(page, realm.emails["owner"], realm.api_keys["owner"])
        queue_id = registered.value.json()["queue_id"]
        expect(state).to_have_text("connected", timeout=SLOW_MS)
        expect_initial_lists(page, realm)

        # Graceful restart on the same port: the page notices, retries, and resumes the
        # same durable queue without a reload and without registering again.
        assert server.stop() == 0, "\n".join(server.lines[-30:])
        expect(state).to_have_text("reconnecting", timeout=SLOW_MS)
        server.start()
        expect(state).to_have_text("connected", timeout=SLOW_MS)
        assert len(browser_page.registers) == 1
        eventq(database_url, "deactivate-user", "zulip", realm.emails["member"])
        expect(rows_of(page, member)).to_have_count(0, timeout=LATENCY_MS)

        # A queue the server no longer has (here: deleted by its owner) is answered with
        # BAD_EVENT_QUEUE_ID; the page registers a new queue and rebuilds the view.
        owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
        with page.expect_response(lambda r: r.url.endswith("/api/v1/register")) as again:
            owner.ok("DELETE", "/events", {"queue_id": queue_id})
        assert again.value.json()["queue_id"] != queue_id
        expect(state).to_have_text("connected", timeout=SLOW_MS)
        for stream_id in realm.streams.values():
            expect(member_names(page, stream_id)).to_have_text(["Guest"])
        eventq(database_url, "reactivate-user", "zulip", realm.emails["member"])
        expect(rows_of(page, member)).to_have_count(3, timeout=LATENCY_MS)
        expect_initial_lists(page, realm)
    finally:
        if server.process is not None and server.process.poll() is None:
            status = server.stop()
            assert status == 0, "\n".join(server.lines[-30:])
    assert len(browser_page.registers) == 2
    browser_page.assert_no_problems()


def test_page_shows_a_channel_description_with_markup_as_text(
    database_url: str, realm: SampleRealm, browser_page: BrowserPage
) -> None:
    """A description is user input: the page shows it as text, from register and from a
    stream create event alike, and no element of it ever exists in the page."""
    page = browser_page.page
    hostile = '<img src=x onerror="document.title=1"><b>bold</b> & more'
    eventq(database_url, "create-stream", "zulip", "hostile", "--description", hostile)
    with live_server(database_url) as server:
        page.goto(server.url + "/")
        sign_in(page, realm.emails["owner"], realm.api_keys["owner"])
        channel = page.locator("[data-stream-id]", has_text="hostile")
        expect(channel.locator(".channel-description")).to_have_text(hostile, timeout=SLOW_MS)

        eventq(database_url, "create-stream", "zulip", "hostile too", "--description", hostile)
        later = page.locator("[data-stream-id]", has_text="hostile too")
        expect(later.locator(".channel-description")).to_have_text(hostile, timeout=LATENCY_MS)
        for markup in ("img", "b"):
            expect(page.locator(f"#channel-list {markup}")).to_have_count(0)
        assert page.title() == "eventq"
    browser_page.assert_no_problems()


def test_page_files_carry_a_strict_content_security_policy(database_url: str) -> None:
    with live_server(database_url) as server:
        for path in ("/", "/static/app.js", "/static/style.css"):
            response = requests.get(server.url + path, timeout=10)
            assert response.status_code == 200, path
            policy = response.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "default-src 'none'" in policy
            assert "unsafe-inline" not in policy
            assert response.headers["X-Content-Type-Options"] == "nosniff"
        page = requests.get(server.url + "/", timeout=10).text
        # No inline script or style: the policy would refuse them anyway.
        assert re.findall(r"<script(?![^>]*\bsrc=)", page) == []
        assert "style=" not in page and "<style" not in page
        outside = requests.get(server.url + "/static/%2e%2e/server/app.py", timeout=10)
        assert outside.status_code in (403, 404)
