"""The owners' and administrators' tools in the browser, in Debian's headless Chromium
driven by Playwright, against a real `eventq serve`:

* the member page's Deactivate and Reactivate buttons: an administrator deactivates and
  reactivates a member (with a confirmation) and a second signed-in member sees the
  member lists change within a second; the refusals (an administrator deactivating an
  owner, the last owner deactivating themselves) read as sentences; a member sees no
  buttons and the API refuses them clearly;
* the operator page `/admin`: the roll-out chart of a mix of full and legacy clients
  (`EVENTQ_LEGACY_CLIENTS`), the live queues, the delivery lag; a member is refused.

The screenshots land in test-artifacts/ (docs/admin-page.png and
docs/member-page-admin.png are copies). The subject does not depend on the database,
so these run on SQLite only. Waits are Playwright's auto-waiting assertions.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    ViewportSize,
    expect,
    sync_playwright,
)

from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm
from tests.helpers.server import live_server
from tests.helpers.sqlite_realm import sqlite_sample_realm
from tests.test_browser import (
    ARTIFACTS,
    CHROMIUM_ARGS,
    LATENCY_MS,
    SLOW_MS,
    require_chromium,
    rows_of,
    sign_in,
)

REQUEST_TIMEOUT_SECS = 10.0
VIEWPORT: ViewportSize = {"width": 1200, "height": 820}


@dataclass
class WatchedPage:
    """A page in a context of its own (its own sign-in), and the problems it logged."""

    page: Page
    problems: list[str] = field(default_factory=list)


class Browsers:
    """One headless Chromium; each `open()` is a separate user's window."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.pages: list[WatchedPage] = []

    def open(self) -> WatchedPage:
        context = self.browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.set_default_timeout(SLOW_MS)
        watched = WatchedPage(page)

        def on_console(message: ConsoleMessage) -> None:
            if "Content Security Policy" in message.text:
                watched.problems.append(f"console: {message.text}")

        page.on("pageerror", lambda error: watched.problems.append(f"page error: {error}"))
        page.on("console", on_console)
        self.pages.append(watched)
        return watched

    def assert_no_problems(self) -> None:
        problems = [problem for watched in self.pages for problem in watched.problems]
        assert not problems, "\n".join(problems)


@pytest.fixture
def browsers() -> Iterator[Browsers]:
    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield Browsers(browser)
        finally:
            browser.close()


@pytest.fixture
def sqlite_realm(tmp_path: Path) -> Iterator[tuple[str, SampleRealm]]:
    with sqlite_sample_realm(tmp_path) as pair:
        yield pair


def signed_in(page: Page, url: str, realm: SampleRealm, who: str) -> None:
    page.goto(url)
    sign_in(page, realm.emails[who], realm.api_keys[who])
    expect(page.locator("#connection-state")).to_have_text("connected", timeout=SLOW_MS)


def confirm(page: Page, question: str) -> None:
    """Answer the page's confirmation dialog, checking what it asks."""
    expect(page.locator("#confirm-dialog")).to_be_visible()
    expect(page.locator("#confirm-text")).to_have_text(question)
    page.locator("#confirm-ok").click()
    expect(page.locator("#confirm-dialog")).to_be_hidden()


def test_an_administrator_deactivates_and_reactivates_from_the_member_page(
    sqlite_realm: tuple[str, SampleRealm], browsers: Browsers
) -> None:
    database_url, realm = sqlite_realm
    member_id, owner_id = realm.users["member"], realm.users["owner"]
    with live_server(database_url) as server:
        admin = browsers.open().page
        watcher = browsers.open().page
        signed_in(admin, server.url + "/", realm, "admin")
        signed_in(watcher, server.url + "/", realm, "loner")
        # The loner sees the member in the public and the web-public channel.
        expect(rows_of(watcher, member_id)).to_have_count(2)

        # Buttons for the administrator, one per person; none for a member.
        expect(admin.locator(".person-action:visible")).to_have_count(len(realm.users))
        expect(watcher.locator(".person-action:visible")).to_have_count(0)
        expect(admin.locator("#admin-link")).to_be_visible()
        expect(watcher.locator("#admin-link")).to_be_hidden()
        button = admin.locator(f'[data-person-id="{member_id}"] .person-action')
        expect(button).to_have_text("Deactivate")

        # Cancel changes nothing and sends nothing.
        guest_button = admin.locator(f'[data-person-id="{realm.users["guest"]}"] .person-action')
        guest_button.click()
        admin.locator("#confirm-cancel").click()
        expect(admin.locator("#confirm-dialog")).to_be_hidden()
        expect(admin.locator("#action-status")).to_be_hidden()

        button.click()
        with admin.expect_response(
            lambda r: r.request.method == "DELETE" and r.url.endswith(f"/api/v1/users/{member_id}")
        ) as deleted:
            confirm(
                admin, "Deactivate Member? Their API key and event queues stop working at once."
            )
        assert deleted.value.ok
        # The other member's lists follow within the page's latency promise.
        expect(rows_of(watcher, member_id)).to_have_count(0, timeout=LATENCY_MS)
        person = watcher.locator(f'[data-person-id="{member_id}"]')
        expect(person).to_have_attribute("data-active", "false", timeout=LATENCY_MS)
        status = admin.locator("#action-status")
        expect(status).to_have_text("Member deactivated.")
        expect(status).to_have_attribute("data-kind", "done")
        expect(button).to_have_text("Reactivate", timeout=LATENCY_MS)
        ARTIFACTS.mkdir(exist_ok=True)
        admin.screenshot(path=ARTIFACTS / "member-page-admin.png", full_page=True)

        button.click()
        with admin.expect_response(
            lambda r: r.url.endswith(f"/api/v1/users/{member_id}/reactivate")
        ) as reactivated:
            confirm(admin, "Reactivate Member? Their channel subscriptions come back.")
        assert reactivated.value.ok
        expect(rows_of(watcher, member_id)).to_have_count(2, timeout=LATENCY_MS)
        expect(person).to_have_attribute("data-active", "true", timeout=LATENCY_MS)
        expect(status).to_have_text("Member reactivated.")
        expect(button).to_have_text("Deactivate")

        # An administrator may not deactivate an owner: the server's sentence shows.
        admin.locator(f'[data-person-id="{owner_id}"] .person-action').click()
        confirm(admin, "Deactivate Owner? Their API key and event queues stop working at once.")
        expect(status).to_have_text(
            "Could not deactivate Owner: Must be an organization owner to deactivate an owner."
        )
        expect(status).to_have_attribute("data-kind", "error")
        expect(watcher.locator(f'[data-person-id="{owner_id}"]')).to_have_attribute(
            "data-active", "true"
        )

        # Nor may the last owner deactivate themselves.
        admin.locator("#sign-out").click()
        sign_in(admin, realm.emails["owner"], realm.api_keys["owner"])
        expect(admin.locator("#connection-state")).to_have_text("connected", timeout=SLOW_MS)
        admin.locator(f'[data-person-id="{owner_id}"] .person-action').click()
        confirm(admin, "Deactivate your own account? You will be signed out.")
        expect(status).to_have_text(
            "Could not deactivate Owner: Cannot deactivate the only organization owner."
        )
        expect(admin.locator("#connection-state")).to_have_text("connected")

        # A member who calls the API anyway is refused, clearly, and nothing changes.
        loner = ApiClient(server.url, realm.emails["loner"], realm.api_keys["loner"])
        for method, path in (
            ("DELETE", f"/users/{member_id}"),
            ("POST", f"/users/{member_id}/reactivate"),
        ):
            refused = loner.call(method, path)
            assert (refused.status, refused.body) == (
                400,
                {
                    "result": "error",
                    "msg": "Must be an organization administrator",
                    "code": "UNAUTHORIZED_PRINCIPAL",
                },
            )
        expect(rows_of(watcher, member_id)).to_have_count(2)
    browsers.assert_no_problems()


def test_the_operator_page_shows_the_rollout_of_full_and_legacy_clients(
    sqlite_realm: tuple[str, SampleRealm], browsers: Browsers
) -> None:
    database_url, realm = sqlite_realm
    env = {"EVENTQ_LEGACY_CLIENTS": "ZulipMobile<27.1"}
    with live_server(database_url, env=env) as server:

        def client(who: str, user_agent: str) -> ApiClient:
            return ApiClient(server.url, realm.emails[who], realm.api_keys[who], user_agent)

        old = client("member", "ZulipMobile/26.0 (Android 13)")
        queues = {
            "old": old.register()["queue_id"],
            "old again": old.register()["queue_id"],
            # The same old version, declaring the capability: the full sequence.
            "capable": client("guest", "ZulipMobile/26.0").register(
                client_capabilities={"deactivation_peer_events": True}
            )["queue_id"],
            "new": client("loner", "ZulipMobile/27.2").register()["queue_id"],
            "terminal": client("owner", "ZulipTerminal/0.7.0").register()["queue_id"],
        }
        # Events handed out, for the lag histogram: a new channel reaches the loner.
        owner = client("owner", "ZulipTerminal/0.7.0")
        owner.ok("POST", "/users/me/subscriptions", {"subscriptions": [{"name": "rollout"}]})
        loner = client("loner", "ZulipMobile/27.2")
        assert loner.poll(queues["new"], -1).body["events"]

        page = browsers.open().page
        signed_in(page, server.url + "/admin", realm, "admin")
        rows = {
            "ZulipMobile/26.0": ("1", "2"),
            "ZulipMobile/27.2": ("1", "0"),
            "ZulipTerminal/0.7.0": ("1", "0"),
        }
        chart = page.locator("#rollout-chart .rollout-row")
        expect(chart).to_have_count(len(rows))
        for label, (full, legacy) in rows.items():
            row = page.locator(f'#rollout-chart [data-client="{label}"]')
            expect(row).to_have_attribute("data-full", full)
            expect(row).to_have_attribute("data-legacy", legacy)
        expect(chart.locator(".label")).to_have_text(list(rows))
        expect(page.locator("#rollout-summary")).to_have_text(
            "3 of 5 live queues (60%) get the full deactivation sequence; 2 get the legacy one."
        )
        table = page.locator("#queue-rows tr")
        expect(table).to_have_count(len(queues))
        expect(page.locator("#queue-rows .sequence.legacy")).to_have_count(2)
        legacy_row = page.locator(f'#queue-rows tr[data-queue-id="{queues["old"]}"]')
        expect(legacy_row.locator(".client")).to_have_text("ZulipMobile/26.0")
        expect(legacy_row.locator(".user")).to_have_text(f"Member ({realm.emails['member']})")
        expect(legacy_row.locator(".sequence")).to_have_text("legacy")
        expect(page.locator("#lag-count")).to_have_text(re.compile(r"^[1-9]\d*$"))
        expect(page.locator("#lag-p50")).to_have_text(re.compile(r"^\d+(\.\d)? (ms|s)$"))
        expect(page.locator("#lag-chart .lag-bar")).to_have_count(16)

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "admin-page.png", full_page=True)

        # The page follows the server: a queue deleted is gone at the next refresh.
        old.ok("DELETE", "/events", {"queue_id": queues["old again"]})
        expect(table).to_have_count(len(queues) - 1, timeout=SLOW_MS)
        expect(page.locator('[data-client="ZulipMobile/26.0"]')).to_have_attribute(
            "data-legacy", "1"
        )

        # A member is refused by the admin endpoints, and told so.
        page.locator("#sign-out").click()
        sign_in(page, realm.emails["member"], realm.api_keys["member"])
        expect(page.locator("#sign-in-error")).to_have_text("Must be an organization administrator")
        expect(page.locator("#view")).to_be_hidden()
        expect(page.locator("#queue-rows tr")).to_have_count(0)
    browsers.assert_no_problems()


def test_the_operator_page_carries_the_strict_content_security_policy(
    sqlite_realm: tuple[str, SampleRealm],
) -> None:
    with live_server(sqlite_realm[0]) as server:
        for path in ("/admin", "/admin/", "/static/admin.js", "/static/admin.css"):
            response = requests.get(server.url + path, timeout=REQUEST_TIMEOUT_SECS)
            assert response.status_code == 200, path
            policy = response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "unsafe-inline" not in policy
        page = requests.get(server.url + "/admin", timeout=REQUEST_TIMEOUT_SECS)
        assert page.headers["Content-Type"] == "text/html; charset=utf-8"
        assert re.findall(r"<script(?![^>]*\bsrc=)", page.text) == []
        assert "style=" not in page.text and "<style" not in page.text
        assert requests.head(server.url + "/admin", timeout=REQUEST_TIMEOUT_SECS).ok
