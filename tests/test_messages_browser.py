"""The browser page's messages, in Debian's headless Chromium driven by Playwright,
against a real `eventq serve`: each channel shows its newest messages (history fetched
after register), new ones arrive live from message events, the page sends to a channel
through its form, and a message's markup is shown as text, never as elements.

Every wait is one of Playwright's auto-waiting `expect` assertions with a timeout; the
one-second ones after a command are the page's latency promise.
"""

from __future__ import annotations

from playwright.sync_api import expect

from actions.messages import ChannelTarget, check_send_message
from models.database import Database
from tests import test_browser
from tests.helpers.realms import SampleRealm
from tests.helpers.server import live_server
from tests.test_browser import ARTIFACTS, LATENCY_MS, SLOW_MS, BrowserPage, eventq, sign_in

# The browser fixture of the page's own tests: one headless Chromium, its problems noted.
browser_page = test_browser.browser_page

# What the page keeps per channel (`MESSAGES_PER_CHANNEL` in app.js).
MESSAGES_PER_CHANNEL = 5
HOSTILE = '<img src=x onerror="document.title=1"> **not bold**'


def test_page_shows_live_channel_messages_and_sends_them(
    database_url: str, realm: SampleRealm, browser_page: BrowserPage
) -> None:
    db = Database(database_url)
    try:
        for content in ["first", "second", HOSTILE]:
            with db.write() as session:
                check_send_message(
                    session,
                    realm.realm_id,
                    realm.users["guest"],
                    ChannelTarget("public"),
                    "history",
                    content,
                    "test",
                )
    finally:
        db.dispose()
    page = browser_page.page
    public = page.locator(f'[data-stream-id="{realm.streams["public"]}"]')
    private = page.locator(f'[data-stream-id="{realm.streams["private"]}"]')
    with live_server(database_url) as server:
        page.goto(server.url + "/")
        sign_in(page, realm.emails["member"], realm.api_keys["member"])
        expect(page.locator("#connection-state")).to_have_text("connected", timeout=SLOW_MS)
        contents = public.locator(".message .message-content")
        expect(contents).to_have_text(["first", "second", HOSTILE], timeout=SLOW_MS)
        expect(public.locator(".message-sender").first).to_have_text("Guest")
        expect(public.locator(".message-topic").first).to_have_text("history")
        expect(private.locator(".message")).to_have_count(0)

        # A message committed by another process arrives through the queue.
        eventq(
            database_url,
            "send",
            "zulip",
            realm.emails["guest"],
            "--channel",
            "private",
            "--topic",
            "live",
            "just now",
        )
        expect(private.locator(".message-content")).to_have_text(["just now"], timeout=LATENCY_MS)

        # The page sends through its own form; the message comes back as an event.
        form = public.locator(".compose")
        form.locator(".compose-topic").fill("from the page")
        for number in range(1, 4):
            form.locator(".compose-content").fill(f"typed {number}")
            form.locator(".compose-send").click()
            expect(contents.last).to_have_text(f"typed {number}", timeout=LATENCY_MS)
            expect(form.locator(".compose-content")).to_have_value("")
        # Only the newest few stay.
        expect(contents).to_have_text(
            ["second", HOSTILE, "typed 1", "typed 2", "typed 3"][-MESSAGES_PER_CHANNEL:]
        )
        expect(public.locator(".message-topic").last).to_have_text("from the page")
        expect(page.locator("#channel-list img")).to_have_count(0)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "browser-page-messages.png", full_page=True)
        expect(page.locator("#channel-list strong")).to_have_count(0)
        assert page.title() == "eventq"
    browser_page.assert_no_problems()
