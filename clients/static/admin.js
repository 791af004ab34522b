/*
 * eventq operator page (/admin): for a realm's owners and administrators, what the
 * server is doing for the realm right now, refreshed every few seconds:
 *
 *   - delivery lag (commit to hand-out) from GET /api/v1/eventq/metrics, the same
 *     histogram /metrics gives Prometheus, with the realm's consumer status;
 *   - the roll-out of the deactivation sequence: live queues per client name and
 *     version on the full and on the legacy sequence (GET /api/v1/eventq/clients);
 *   - the live queues with their client and sequence (GET /api/v1/eventq/queues).
 *
 * Plain JavaScript, no build step; the charts are SVG built with DOM calls, so the
 * strict CSP (this origin only, no inline code or style) holds. Credentials are kept
 * as the member page keeps them: in this page's memory only, sent as a Basic header.
 */
"use strict";

(() => {
  // -- constants ------------------------------------------------------------------------

  // Often enough to watch a roll-out or an incident live, rarely enough that an open
  // page costs the server nothing (three small admin reads per refresh).
  const REFRESH_MS = 2_000;
  const REQUEST_TIMEOUT_MS = 10_000;
  // The charts' geometry, in SVG user units; the SVG scales to its box, which is about
  // this wide on a desktop window, so text keeps about its CSS size there.
  const CHART_WIDTH = 960;
  const ROW_HEIGHT = 26;
  const BAR_HEIGHT = 18;
  const LABEL_WIDTH = 210;
  const COUNT_WIDTH = 170;
  const LAG_CHART_HEIGHT = 110;
  const LAG_AXIS_HEIGHT = 24;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const byId = (id) => document.getElementById(id);
  const dom = {
    state: byId("connection-state"),
    whoami: byId("whoami"),
    signOut: byId("sign-out"),
    form: byId("sign-in"),
    email: byId("email"),
    apiKey: byId("api-key"),
    signInError: byId("sign-in-error"),
    view: byId("view"),
    lagP50: byId("lag-p50"),
    lagP90: byId("lag-p90"),
    lagP99: byId("lag-p99"),
    lagCount: byId("lag-count"),
    deliveryState: byId("delivery-state"),
    lagChart: byId("lag-chart"),
    rolloutSummary: byId("rollout-summary"),
    rolloutChart: byId("rollout-chart"),
    queueCount: byId("queue-count"),
    queueRows: byId("queue-rows"),
    updated: byId("updated"),
  };
  const collator = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });

  // -- HTTP -----------------------------------------------------------------------------

  /** An answer that is not a success; `code` is Zulip's error code. */
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.msg) || `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.code) || null;
    }
  }

  function basicAuthorization(email, apiKey) {
    const bytes = new TextEncoder().encode(`${email}:${apiKey}`);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return `Basic ${btoa(binary)}`;
  }

  async function getJson(session, path) {
    const controller = new AbortController();
    const cancel = () => controller.abort();
    session.abort.signal.addEventListener("abort", cancel, { once: true });
    const timer = setTimeout(cancel, REQUEST_TIMEOUT_MS);
    try {
      const response = await fetch(path, {
        headers: { Authorization: session.authorization, Accept: "application/json" },
        credentials: "omit",
        cache: "no-store",
        signal: controller.signal,
      });
      let body = null;
      try {
        body = await response.json();
      } catch {
        // Not JSON (a proxy's error page): judged by its status.
      }
      if (!response.ok || !body || body.result !== "success") {
        throw new ApiError(response.status, body);
      }
      return body;
    } finally {
      clearTimeout(timer);
      session.abort.signal.removeEventListener("abort", cancel);
    }
  }

  // -- small DOM helpers ----------------------------------------------------------------

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function setState(state, detail = "") {
    dom.state.dataset.state = state.replace(/ /g, "-");
    dom.state.textContent = state;
    dom.state.title = detail;
  }

  function formatSeconds(secs) {
    if (secs === null || secs === undefined) return "–";
    if (secs < 1) return `${(secs * 1000).toFixed(secs < 0.01 ? 1 : 0)} ms`;
    return `${secs.toFixed(secs < 10 ? 2 : 0)} s`;
  }

  /** A bucket's short axis label: "2.5ms", "1s"; the overflow bucket ">60s". */
  function bucketLabel(le, previous) {
    if (le === null) return `>${bucketLabel(previous)}`;
    return le < 1 ? `${Number((le * 1000).toPrecision(3))}ms` : `${le}s`;
  }

  function clientLabel(name, version) {
    return version ? `${name}/${version}` : name;
  }

  // -- delivery lag ---------------------------------------------------------------------

  function renderLag(metrics) {
    const lag = metrics.delivery_lag;
    dom.lagP50.textContent = formatSeconds(lag.p50_secs);
    dom.lagP90.textContent = formatSeconds(lag.p90_secs);
    dom.lagP99.textContent = formatSeconds(lag.p99_secs);
    dom.lagCount.textContent = String(lag.count);
    const delivery = metrics.delivery;
    dom.deliveryState.textContent = delivery.failing
      ? `paused after seq ${delivery.routed_seq}: ${delivery.last_error}`
      : `routed to seq ${delivery.routed_seq}`;
    dom.deliveryState.dataset.failing = String(delivery.failing);

    // One bar per bucket, of the observations in it (the buckets are cumulative).
    const bars = [];
    let below = 0;
    for (const bucket of lag.buckets) {
      bars.push({ le: bucket.le, count: bucket.count - below });
      below = bucket.count;
    }
    const most = Math.max(1, ...bars.map((bar) => bar.count));
    const width = CHART_WIDTH / bars.length;
    const chart = dom.lagChart;
    chart.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${LAG_CHART_HEIGHT + LAG_AXIS_HEIGHT}`);
    const nodes = [];
    bars.forEach((bar, index) => {
      const height = Math.round((bar.count / most) * (LAG_CHART_HEIGHT - 16));
      const x = index * width;
      const previous = index > 0 ? bars[index - 1].le : null;
      const label = bucketLabel(bar.le, previous);
      let range = `${bucketLabel(previous)}–${label}`;
      if (previous === null) range = `up to ${label}`;
      if (bar.le === null) range = `over ${bucketLabel(previous)}`;
      const group = svg("g", { class: "lag-bar", "data-le": String(bar.le) });
      group.append(
        svg("rect", {
          x: String(x + 3),
          y: String(LAG_CHART_HEIGHT - height),
          width: String(width - 6),
          height: String(height),
        }),
        svg("title", {}, `${bar.count} events handed out ${range} after their commit`),
        svg("text", { x: String(x + width / 2), y: String(LAG_CHART_HEIGHT + 18), class: "axis" }, label),
      );
      if (bar.count > 0) {
        group.append(
          svg(
            "text",
            { x: String(x + width / 2), y: String(LAG_CHART_HEIGHT - height - 4), class: "value" },
            String(bar.count),
          ),
        );
      }
      nodes.push(group);
    });
    chart.replaceChildren(...nodes);
  }

  // -- the roll-out chart ---------------------------------------------------------------

  /** Client rows (name, version, full, legacy), sorted by name and version. */
  function rolloutRows(clients) {
    const rows = new Map();
    for (const entry of clients) {
      const key = clientLabel(entry.client_name, entry.client_version);
      if (!rows.has(key)) {
        rows.set(key, { label: key, name: entry.client_name, version: entry.client_version || "", full: 0, legacy: 0 });
      }
      rows.get(key)[entry.sequence] += entry.queues;
    }
    return [...rows.values()].sort(
      (a, b) => collator.compare(a.name, b.name) || collator.compare(a.version, b.version),
    );
  }

  function renderRollout(clients) {
    const rows = rolloutRows(clients);
    const full = rows.reduce((sum, row) => sum + row.full, 0);
    const legacy = rows.reduce((sum, row) => sum + row.legacy, 0);
    const total = full + legacy;
    dom.rolloutSummary.textContent = total
      ? `${full} of ${total} live queues (${Math.round((100 * full) / total)}%) get the full ` +
        `deactivation sequence; ${legacy} get the legacy one.`
      : "No live queues.";
    const most = Math.max(1, ...rows.map((row) => row.full + row.legacy));
    const barSpace = CHART_WIDTH - LABEL_WIDTH - COUNT_WIDTH;
    const chart = dom.rolloutChart;
    chart.setAttribute("viewBox", `0 0 ${CHART_WIDTH} ${Math.max(1, rows.length) * ROW_HEIGHT}`);
    const nodes = rows.map((row, index) => {
      const y = index * ROW_HEIGHT;
      const fullWidth = (row.full / most) * barSpace;
      const legacyWidth = (row.legacy / most) * barSpace;
      const group = svg("g", {
        class: "rollout-row",
        "data-client": row.label,
        "data-full": String(row.full),
        "data-legacy": String(row.legacy),
      });
      group.append(
        svg("text", { x: String(LABEL_WIDTH - 8), y: String(y + BAR_HEIGHT - 4), class: "label" }, row.label),
        svg("rect", {
          class: "full",
          x: String(LABEL_WIDTH),
          y: String(y + 2),
          width: String(fullWidth),
          height: String(BAR_HEIGHT),
        }),
        svg("rect", {
          class: "legacy",
          x: String(LABEL_WIDTH + fullWidth),
          y: String(y + 2),
          width: String(legacyWidth),
          height: String(BAR_HEIGHT),
        }),
        svg(
          "text",
          { x: String(LABEL_WIDTH + fullWidth + legacyWidth + 6), y: String(y + BAR_HEIGHT - 4), class: "value" },
          `${row.full} full, ${row.legacy} legacy`,
        ),
        svg("title", {}, `${row.label}: ${row.full} full, ${row.legacy} legacy`),
      );
      return group;
    });
    chart.replaceChildren(...nodes);
  }

  // -- the queue table ------------------------------------------------------------------

  function renderQueues(session, queues) {
    const now = Date.now() / 1000;
    dom.queueCount.textContent = String(queues.length);
    const sorted = [...queues].sort(
      (a, b) => collator.compare(a.client_name, b.client_name) || a.user_id - b.user_id,
    );
    const rows = sorted.map((queue) => {
      const row = element("tr");
      row.dataset.queueId = queue.queue_id;
      const user = session.users.get(queue.user_id);
      const sequence = queue.legacy_deactivation ? "legacy" : "full";
      const idle = now - queue.last_active;
      row.append(
        element("td", "queue-id", queue.queue_id.slice(0, 12)),
        element("td", "user", user ? `${user.full_name} (${user.email})` : `user ${queue.user_id}`),
        element("td", "client", clientLabel(queue.client_name, queue.client_version)),
        element("td", `sequence ${sequence}`, sequence),
        element("td", "pending", String(queue.pending)),
        element("td", "last-poll", queue.waiting ? "waiting" : `${Math.max(0, Math.round(idle))} s ago`),
        element("td", "expires", `${Math.round(queue.expires_in)} s`),
      );
      row.firstChild.title = queue.queue_id;
      return row;
    });
    dom.queueRows.replaceChildren(...rows);
  }

  // -- the session ----------------------------------------------------------------------

  let current = null;

  async function refreshUsers(session) {
    const answer = await getJson(session, "/api/v1/users");
    session.users = new Map(answer.members.map((member) => [member.user_id, member]));
  }

  async function refresh(session) {
    const [queues, clients, metrics] = await Promise.all([
      getJson(session, "/api/v1/eventq/queues"),
      getJson(session, "/api/v1/eventq/clients"),
      getJson(session, "/api/v1/eventq/metrics"),
    ]);
    if (queues.queues.some((queue) => !session.users.has(queue.user_id))) {
      await refreshUsers(session); // someone new: learn their name
    }
    if (session !== current) return;
    renderLag(metrics);
    renderRollout(clients.clients);
    renderQueues(session, queues.queues);
    dom.updated.textContent = `Updated ${new Date().toLocaleTimeString()}; every ${REFRESH_MS / 1000} s.`;
  }

  async function run(session) {
    setState("connecting");
    try {
      const me = await getJson(session, "/api/v1/users/me");
      dom.whoami.textContent = `${me.full_name} (${me.email})`;
      await refreshUsers(session);
    } catch (error) {
      if (session === current) endSession(error.message);
      return;
    }
    while (session === current) {
      try {
        // The admin endpoints decide who may see this page: a member's first refresh
        // ends in the server's refusal, shown on the sign-in form.
        await refresh(session);
        if (session !== current) return;
        dom.view.hidden = false;
        setState("connected");
      } catch (error) {
        if (session !== current) return;
        if (error instanceof ApiError && (error.status === 401 || error.code === "UNAUTHORIZED_PRINCIPAL")) {
          endSession(error.message); // deactivated, or no longer an administrator
          return;
        }
        setState("reconnecting", error.message);
      }
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, REFRESH_MS);
        session.abort.signal.addEventListener("abort", () => {
          clearTimeout(timer);
          resolve();
        }, { once: true });
      });
    }
  }

  function startSession(email, apiKey) {
    const session = {
      authorization: basicAuthorization(email, apiKey),
      abort: new AbortController(),
      users: new Map(),
    };
    current = session;
    dom.form.hidden = true;
    dom.signInError.hidden = true;
    dom.whoami.textContent = email;
    dom.whoami.hidden = false;
    dom.signOut.hidden = false;
    run(session);
  }

  function endSession(errorMessage) {
    const session = current;
    if (!session) return;
    current = null;
    session.abort.abort();
    dom.view.hidden = true;
    dom.whoami.hidden = true;
    dom.signOut.hidden = true;
    dom.form.hidden = false;
    dom.queueRows.replaceChildren();
    dom.rolloutChart.replaceChildren();
    dom.lagChart.replaceChildren();
    dom.signInError.textContent = errorMessage || "";
    dom.signInError.hidden = !errorMessage;
    setState("signed out", errorMessage || "");
    (errorMessage ? dom.apiKey : dom.email).focus();
  }

  dom.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const email = dom.email.value.trim();
    const apiKey = dom.apiKey.value.trim();
    if (!email || !apiKey) return;
    dom.apiKey.value = "";
    startSession(email, apiKey);
  });

  dom.signOut.addEventListener("click", () => endSession(""));

  setState("signed out");
})();
