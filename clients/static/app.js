/*
 * eventq browser page: sign in with an email and API key, register an event queue,
 * show every channel the user can see with its live member list and its newest messages
 * (with a form to send one), and keep it current by long-polling the queue (docs/architecture.md §6).
 *
 * Plain JavaScript, no build step. Credentials live only in this page's memory: they
 * are sent as an HTTP Basic header built here, never stored in a cookie or in storage,
 * so a reload signs the user out.
 *
 * Events update the DOM by key: a channel is `[data-stream-id]`, a member row inside it
 * `[data-user-id]`, a message `[data-message-id]`, a person in the people list
 * `[data-person-id]`. An event touches only
 * the rows it names; nothing is re-rendered wholesale except after a (re-)register.
 */
"use strict";

(() => {
  // -- constants ------------------------------------------------------------------------

  const EVENT_TYPES = ["realm_user", "subscription", "stream", "message"];
  // Each channel shows its newest messages only: a glance at what is being said, kept
  // current by message events, not a reader of the whole history.
  const MESSAGES_PER_CHANNEL = 5;
  // The server answers an idle poll with a heartbeat within 55 s; 90 s is Zulip's own
  // clients' read timeout, so a poll that outlives it is on a dead connection.
  const POLL_TIMEOUT_MS = 90_000;
  // register, the confirming poll and DELETE answer at once on a live server.
  const REQUEST_TIMEOUT_MS = 15_000;
  // Retries after a network error double from this, so a short restart costs well
  // under a second, up to the cap, so a long outage costs one request per few seconds.
  const BACKOFF_BASE_MS = 200;
  const BACKOFF_CAP_MS = 8_000;
  const RELATIONS = {
    subscriptions: "subscribed",
    unsubscribed: "unsubscribed",
    never_subscribed: "not subscribed",
  };

  const byId = (id) => document.getElementById(id);
  const dom = {
    state: byId("connection-state"),
    whoami: byId("whoami"),
    signOut: byId("sign-out"),
    form: byId("sign-in"),
    email: byId("email"),
    apiKey: byId("api-key"),
    signInButton: byId("sign-in-button"),
    signInError: byId("sign-in-error"),
    view: byId("view"),
    channelList: byId("channel-list"),
    channelCount: byId("channel-count"),
    peopleList: byId("people-list"),
    peopleCount: byId("people-count"),
    actionStatus: byId("action-status"),
    adminLink: byId("admin-link"),
    confirmDialog: byId("confirm-dialog"),
    confirmText: byId("confirm-text"),
    confirmOk: byId("confirm-ok"),
    confirmCancel: byId("confirm-cancel"),
  };
  const collator = new Intl.Collator(undefined, { sensitivity: "base", numeric: true });

  // -- errors of a request ----------------------------------------------------------------

  /** The session ended (sign-out) while the request was in flight: stop quietly. */
  class Cancelled extends Error {}

  /** No answer: refused, reset, timed out or cut mid-body. Worth retrying. */
  class NetworkError extends Error {}

  /** An answer that is not Zulip's `result: success`; `code` from its JSON body. */
  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.msg) || `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.code) || null;
    }

    get retryable() {
      // 5xx: the server or its database is briefly unavailable; 429: asked to slow down.
      return this.status >= 500 || this.status === 429;
    }
  }

  // -- HTTP -------------------------------------------------------------------------------

  function basicAuthorization(email, apiKey) {
    // btoa takes Latin-1 only; encode as UTF-8 first, as the server decodes it.
    const bytes = new TextEncoder().encode(`${email}:${apiKey}`);
    let binary = "";
    for (const byte of bytes) binary += String.fromCharCode(byte);
    return `Basic ${btoa(binary)}`;
  }

  /** Zulip's parameter encoding: strings as they are, every other value as JSON. */
  function encodeParams(params) {
    const encoded = new URLSearchParams();
    for (const [name, value] of Object.entries(params)) {
      encoded.append(name, typeof value === "string" ? value : JSON.stringify(value));
    }
    return encoded;
  }

  function sleep(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(new Cancelled());
        return;
      }
      const timer = setTimeout(() => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      }, ms);
      function onAbort() {
        clearTimeout(timer);
        reject(new Cancelled());
      }
      signal.addEventListener("abort", onAbort, { once: true });
    });
  }

  /**
   * One API call of `session`; resolves to the JSON body of a success, rejects with
   * Cancelled, NetworkError or ApiError. Bodies are form-encoded, also on DELETE.
   */
  async function callApi(session, method, path, params, timeoutMs, extra = {}) {
    const controller = new AbortController();
    const cancel = () => controller.abort();
    session.abort.signal.addEventListener("abort", cancel, { once: true });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, timeoutMs);
    const query = method === "GET" ? `?${encodeParams(params)}` : "";
    const failure = (error) => {
      if (session.abort.signal.aborted) return new Cancelled();
      return new NetworkError(timedOut ? `no answer within ${timeoutMs} ms` : String(error));
    };
    try {
      let response;
      let text;
      try {
        response = await fetch(path + query, {
          method,
          body: method === "GET" ? undefined : encodeParams(params),
          headers: { Authorization: session.authorization, Accept: "application/json" },
          // Never send or store cookies: the Basic header is the only credential.
          credentials: "omit",
          cache: "no-store",
          signal: controller.signal,
          ...extra,
        });
        text = await response.text();
      } catch (error) {
        throw failure(error);
      }
      let body = null;
      try {
        body = JSON.parse(text);
      } catch {
        // A proxy's HTML error page, say: judged by its status alone below.
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

  // -- connection state -------------------------------------------------------------------

  function setConnectionState(state, detail = "") {
    dom.state.dataset.state = state.replace(/ /g, "-");
    dom.state.textContent = state;
    dom.state.title = detail;
  }

  // -- the view model and its keyed DOM ---------------------------------------------------

  /**
   * What the page shows, keyed by id so an event finds its rows directly:
   * users (id -> person), channels (id -> channel record with its DOM nodes and member
   * rows), userChannels (user id -> ids of the channels listing the user), people rows.
   */
  const view = {
    selfId: null,
    users: new Map(),
    channels: new Map(),
    userChannels: new Map(),
    peopleRows: new Map(),
  };
  // Sort key of each keyed row, for ordered insertion without reading the DOM text.
  const sortKeys = new WeakMap();

  function compareKeys(a, b) {
    return collator.compare(a.name, b.name) || a.id - b.id;
  }

  /** Insert or move `row` to its place among `list`'s sorted children (binary search). */
  function placeSorted(list, row, key) {
    sortKeys.set(row, key);
    if (row.parentNode === list) row.remove();
    const children = list.children;
    let low = 0;
    let high = children.length;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (compareKeys(sortKeys.get(children[middle]), key) < 0) low = middle + 1;
      else high = middle;
    }
    list.insertBefore(row, children[low] || null);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function displayName(userId) {
    const person = view.users.get(userId);
    return person ? person.full_name : `User ${userId}`;
  }

  function isActive(userId) {
    const person = view.users.get(userId);
    return person ? person.is_active !== false : true;
  }

  // Zulip's role numbers; a user object has no is_moderator flag, only its role.
  const ROLE_NAMES = { 100: "owner", 200: "admin", 300: "moderator", 400: "member", 600: "guest" };

  function roleName(person) {
    if (person.is_bot) return "bot";
    return ROLE_NAMES[person.role] || "member";
  }

  function userKey(userId) {
    return { name: displayName(userId), id: userId };
  }

  // Member rows and people rows share this rendering of a user's name and state.
  function fillUserRow(row, userId) {
    const active = isActive(userId);
    row.dataset.active = String(active);
    row.querySelector(".name").textContent = displayName(userId);
    row.querySelector(".you").hidden = userId !== view.selfId;
    row.querySelector(".user-state").textContent = active ? "active" : "deactivated";
  }

  function newUserRow(className, keyAttribute, userId) {
    const row = element("li", className);
    row.setAttribute(keyAttribute, String(userId));
    row.append(
      element("span", "name"),
      element("span", "you", "(you)"),
      element("span", "user-state"),
    );
    return row;
  }

  // -- people -----------------------------------------------------------------------------

  function renderPerson(userId) {
    const person = view.users.get(userId);
    let row = view.peopleRows.get(userId);
    if (!person) {
      if (row) row.remove();
      view.peopleRows.delete(userId);
      return;
    }
    if (!row) {
      row = newUserRow("person", "data-person-id", userId);
      const action = element("button", "person-action");
      action.type = "button";
      row.append(element("span", "role"), action);
      view.peopleRows.set(userId, row);
    }
    fillUserRow(row, userId);
    row.querySelector(".role").textContent = roleName(person);
    renderPersonAction(row, userId);
    placeSorted(dom.peopleList, row, userKey(userId));
  }

  function updatePeopleCount() {
    let active = 0;
    for (const person of view.users.values()) if (person.is_active !== false) active += 1;
    dom.peopleCount.textContent = `${active} active, ${view.users.size - active} deactivated`;
  }

  // -- channels ---------------------------------------------------------------------------

  function privacyOf(info) {
    if (info.invite_only) return "private";
    if (info.is_web_public) return "web-public";
    return "public";
  }

  function createChannel(streamId) {
    const root = element("li", "channel");
    root.dataset.streamId = String(streamId);
    const head = element("div", "channel-head");
    const name = element("h3", "channel-name");
    const privacy = element("span", "badge privacy");
    const relation = element("span", "badge relation");
    const count = element("span", "member-count");
    head.append(name, privacy, relation, count);
    // The plain-text `description`, never `rendered_description`: nothing a user typed
    // is ever parsed as HTML here.
    const description = element("p", "channel-description");
    const members = element("ul", "members");
    members.setAttribute("aria-label", "members");
    const { messages, compose } = createMessagePane();
    root.append(head, description, messages, compose, members);
    return {
      id: streamId,
      info: {},
      relation: "not subscribed",
      rows: new Map(),
      messages: new Map(),
      nodes: { root, name, privacy, relation, count, description, members, messages, compose },
    };
  }

  /** Create or update a channel from a register entry or an event's stream object. */
  function upsertChannel(info, relation) {
    const streamId = info.stream_id;
    let channel = view.channels.get(streamId);
    const isNew = !channel;
    if (isNew) {
      channel = createChannel(streamId);
      view.channels.set(streamId, channel);
    }
    const oldName = channel.info.name;
    const { subscribers: _ignored, ...fields } = info;
    Object.assign(channel.info, fields);
    if (relation) channel.relation = relation;
    renderChannelHead(channel);
    if (isNew || oldName !== channel.info.name) {
      placeSorted(dom.channelList, channel.nodes.root, { name: channel.info.name, id: streamId });
    }
    if (isNew) updateChannelCount();
    return channel;
  }

  function renderChannelHead(channel) {
    const { root, name, privacy, relation, description } = channel.nodes;
    const kind = privacyOf(channel.info);
    root.dataset.privacy = kind;
    root.dataset.relation = channel.relation.replace(/ /g, "-");
    name.textContent = channel.info.name;
    privacy.textContent = kind;
    relation.textContent = channel.relation;
    description.textContent = channel.info.description || "";
    description.hidden = !channel.info.description;
  }

  function renderMemberCount(channel) {
    const size = channel.rows.size;
    channel.nodes.count.textContent = `${size} ${size === 1 ? "member" : "members"}`;
  }

  function updateChannelCount() {
    dom.channelCount.textContent = String(view.channels.size);
  }

  function removeChannel(streamId) {
    const channel = view.channels.get(streamId);
    if (!channel) return;
    for (const userId of channel.rows.keys()) view.userChannels.get(userId)?.delete(streamId);
    channel.nodes.root.remove();
    view.channels.delete(streamId);
    updateChannelCount();
  }

  function addMember(channel, userId) {
    if (channel.rows.has(userId)) return;
    const row = newUserRow("member", "data-user-id", userId);
    fillUserRow(row, userId);
    channel.rows.set(userId, row);
    if (!view.userChannels.has(userId)) view.userChannels.set(userId, new Set());
    view.userChannels.get(userId).add(channel.id);
    placeSorted(channel.nodes.members, row, userKey(userId));
    renderMemberCount(channel);
  }

  function removeMember(channel, userId) {
    const row = channel.rows.get(userId);
    if (!row) return;
    row.remove();
    channel.rows.delete(userId);
    view.userChannels.get(userId)?.delete(channel.id);
    renderMemberCount(channel);
  }

  /** Make the channel's member rows exactly `userIds`, touching only the difference. */
  function setMembers(channel, userIds) {
    const wanted = new Set(userIds);
    for (const userId of [...channel.rows.keys()]) {
      if (!wanted.has(userId)) removeMember(channel, userId);
    }
    for (const userId of wanted) addMember(channel, userId);
    renderMemberCount(channel);
  }

  /** Re-render every row showing `userId` (its name or active state changed). */
  function refreshUser(userId, nameChanged) {
    for (const streamId of view.userChannels.get(userId) || []) {
      const channel = view.channels.get(streamId);
      const row = channel && channel.rows.get(userId);
      if (!row) continue;
      fillUserRow(row, userId);
      if (nameChanged) placeSorted(channel.nodes.members, row, userKey(userId));
    }
    renderPerson(userId);
    updatePeopleCount();
  }

  function removeUserFromChannels(userId) {
    for (const streamId of [...(view.userChannels.get(userId) || [])]) {
      const channel = view.channels.get(streamId);
      if (channel) removeMember(channel, userId);
    }
  }

  // -- building the view from a register answer -------------------------------------------

  function resetView() {
    view.selfId = null;
    view.users.clear();
    view.channels.clear();
    view.userChannels.clear();
    view.peopleRows.clear();
    dom.channelList.replaceChildren();
    dom.peopleList.replaceChildren();
    dom.channelCount.textContent = "";
    dom.peopleCount.textContent = "";
    showActionStatus("", "");
  }

  function buildView(answer) {
    resetView();
    const people = [...(answer.realm_users || []), ...(answer.realm_non_active_users || [])];
    for (const person of people) view.users.set(person.user_id, { ...person });
    // The answer names the current user in its own keys (it fetches realm_user state).
    view.selfId = typeof answer.user_id === "number" ? answer.user_id : null;
    for (const userId of view.users.keys()) renderPerson(userId);
    updatePeopleCount();
    for (const [key, relation] of Object.entries(RELATIONS)) {
      for (const entry of answer[key] || []) {
        const channel = upsertChannel(entry, relation);
        setMembers(channel, entry.subscribers || []);
      }
    }
    updateChannelCount();
  }

  // -- applying events --------------------------------------------------------------------

  function applyRealmUser(event) {
    const person = event.person;
    const userId = person.user_id;
    if (event.op === "add") {
      view.users.set(userId, { ...person });
      refreshUser(userId, true);
    } else if (event.op === "update") {
      const known = view.users.get(userId);
      if (!known) return; // an update of a user we were never told about: nothing shows it
      Object.assign(known, person);
      if (person.is_active === false) {
        // With deactivation_peer_events the server already sent peer_remove events;
        // removing here as well keeps the lists right on an older server.
        removeUserFromChannels(userId);
      }
      refreshUser(userId, "full_name" in person);
      // Our own role changed: the Deactivate and Reactivate buttons come or go.
      if (userId === view.selfId && "role" in person) {
        for (const otherId of view.users.keys()) renderPerson(otherId);
        dom.adminLink.hidden = !canManageUsers();
      }
    } else if (event.op === "remove") {
      removeUserFromChannels(userId);
      view.users.delete(userId);
      renderPerson(userId);
      updatePeopleCount();
    }
  }

  function applyStream(event) {
    if (event.op === "create") {
      for (const info of event.streams) {
        // A channel we already list keeps its relation; a new one is not subscribed.
        const relation = view.channels.has(info.stream_id) ? null : "not subscribed";
        upsertChannel(info, relation);
        renderMemberCount(view.channels.get(info.stream_id));
      }
    } else if (event.op === "delete") {
      // `stream_ids` since Zulip feature level 343; `streams` on older servers.
      const ids = event.stream_ids || event.streams.map((info) => info.stream_id);
      for (const streamId of ids) removeChannel(streamId);
    } else if (event.op === "update" && view.channels.has(event.stream_id)) {
      upsertChannel({ stream_id: event.stream_id, [event.property]: event.value }, null);
    }
  }

  function applySubscription(event) {
    if (event.op === "add") {
      for (const sub of event.subscriptions) {
        const channel = upsertChannel(sub, "subscribed");
        if (sub.subscribers) setMembers(channel, sub.subscribers);
        else if (view.selfId !== null) addMember(channel, view.selfId);
      }
    } else if (event.op === "remove") {
      for (const sub of event.subscriptions) {
        const channel = view.channels.get(sub.stream_id);
        if (!channel) continue;
        channel.relation = "unsubscribed";
        renderChannelHead(channel);
        if (view.selfId !== null) removeMember(channel, view.selfId);
      }
    } else if (event.op === "peer_add" || event.op === "peer_remove") {
      const change = event.op === "peer_add" ? addMember : removeMember;
      for (const streamId of event.stream_ids) {
        const channel = view.channels.get(streamId);
        if (!channel) continue; // a channel this user cannot see
        for (const userId of event.user_ids) change(channel, userId);
      }
    }
  }

  // -- messages ---------------------------------------------------------------------------
  // Queues and history ask for apply_markdown=false: a message's content is what its
  // sender typed, and is shown as text, so no markup of theirs ever becomes an element.

  function createMessagePane() {
    const messages = element("ol", "messages");
    messages.setAttribute("aria-label", "newest messages");
    const compose = element("form", "compose");
    const topic = element("input", "compose-topic");
    topic.name = "topic";
    topic.placeholder = "topic";
    topic.required = true;
    topic.maxLength = 60;
    topic.setAttribute("aria-label", "topic");
    const content = element("input", "compose-content");
    content.name = "content";
    content.placeholder = "message";
    content.required = true;
    content.setAttribute("aria-label", "message");
    const send = element("button", "compose-send", "Send");
    send.type = "submit";
    const error = element("p", "compose-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    compose.append(topic, content, send, error);
    return { messages, compose };
  }

  /** Show `message` in its channel, in id order, keeping only the newest few. */
  function addMessage(channel, message) {
    if (channel.messages.has(message.id)) return;
    const row = element("li", "message");
    row.dataset.messageId = String(message.id);
    row.append(
      element("span", "message-sender", message.sender_full_name),
      element("span", "message-topic", message.subject),
      element("span", "message-content", message.content),
    );
    channel.messages.set(message.id, row);
    const list = channel.nodes.messages;
    const later = [...list.children].find((other) => Number(other.dataset.messageId) > message.id);
    list.insertBefore(row, later || null);
    while (channel.messages.size > MESSAGES_PER_CHANNEL) {
      const oldest = Math.min(...channel.messages.keys());
      channel.messages.get(oldest).remove();
      channel.messages.delete(oldest);
    }
  }

  function applyMessage(event) {
    const message = event.message;
    if (message.type !== "stream") return; // direct messages have no channel to show in
    const channel = view.channels.get(message.stream_id);
    if (channel) addMessage(channel, message);
  }

  /** Each channel's newest messages, after a (re-)register; events may come first, and a
   * message both fetched and received shows once. */
  function loadHistory(session) {
    for (const channel of view.channels.values()) {
      const params = {
        anchor: "newest",
        num_before: MESSAGES_PER_CHANNEL,
        num_after: 0,
        narrow: [{ operator: "channel", operand: channel.id }],
        apply_markdown: false,
      };
      callApi(session, "GET", "/api/v1/messages", params, REQUEST_TIMEOUT_MS)
        .then((answer) => {
          if (session !== current || view.channels.get(channel.id) !== channel) return;
          for (const message of answer.messages) addMessage(channel, message);
        })
        // The list stays as the events fill it; the next register tries again.
        .catch(() => {});
    }
  }

  /** Send the compose form's message; it shows when its event comes back, like anyone's. */
  async function sendMessage(session, channel, form) {
    const error = form.querySelector(".compose-error");
    const content = form.elements.content;
    const params = {
      type: "stream",
      to: channel.id,
      topic: form.elements.topic.value,
      content: content.value,
    };
    error.hidden = true;
    try {
      await callApi(session, "POST", "/api/v1/messages", params, REQUEST_TIMEOUT_MS);
      if (session === current) content.value = "";
    } catch (failure) {
      if (failure instanceof Cancelled || session !== current) return;
      error.textContent = failure.message;
      error.hidden = false;
    }
  }

  function applyEvent(event) {
    if (event.type === "realm_user") applyRealmUser(event);
    else if (event.type === "stream") applyStream(event);
    else if (event.type === "subscription") applySubscription(event);
    else if (event.type === "message") applyMessage(event);
    // heartbeat and anything else: only its id matters, taken by the caller.
  }

  // -- deactivating and reactivating users (owners and administrators) -------------------

  // Zulip's role numbers of the two roles that may deactivate and reactivate users.
  const MANAGING_ROLES = new Set([100, 200]);
  // The change the confirmation dialog is asking about, with the session it belongs to.
  let pendingChange = null;

  /** Whether the signed-in user may deactivate and reactivate others (the server checks
   * again: this only decides whether the buttons show). */
  function canManageUsers() {
    const me = view.users.get(view.selfId);
    return Boolean(me && me.is_active !== false && MANAGING_ROLES.has(me.role));
  }

  function renderPersonAction(row, userId) {
    const button = row.querySelector(".person-action");
    const active = isActive(userId);
    button.hidden = !canManageUsers();
    button.dataset.action = active ? "deactivate" : "reactivate";
    button.textContent = active ? "Deactivate" : "Reactivate";
    button.setAttribute("aria-label", `${button.textContent} ${displayName(userId)}`);
  }

  /** The outcome line above the people list: kind "pending", "done" or "error". */
  function showActionStatus(kind, text) {
    dom.actionStatus.dataset.kind = kind;
    dom.actionStatus.textContent = text;
    dom.actionStatus.hidden = !text;
  }

  function askToConfirm(userId, action) {
    const name = displayName(userId);
    let question = `Reactivate ${name}? Their channel subscriptions come back.`;
    if (action === "deactivate") {
      question =
        userId === view.selfId
          ? "Deactivate your own account? You will be signed out."
          : `Deactivate ${name}? Their API key and event queues stop working at once.`;
    }
    pendingChange = { userId, action, session: current };
    dom.confirmText.textContent = question;
    dom.confirmOk.textContent = action === "deactivate" ? "Deactivate" : "Reactivate";
    dom.confirmOk.dataset.action = action;
    dom.confirmDialog.showModal();
  }

  /** Send the confirmed change; the lists change when its events arrive, like anyone's. */
  async function changeActive({ userId, action, session }) {
    if (session !== current) return;
    const name = displayName(userId);
    const deactivate = action === "deactivate";
    showActionStatus("pending", `${deactivate ? "Deactivating" : "Reactivating"} ${name}…`);
    const path = deactivate ? `/api/v1/users/${userId}` : `/api/v1/users/${userId}/reactivate`;
    try {
      await callApi(session, deactivate ? "DELETE" : "POST", path, {}, REQUEST_TIMEOUT_MS);
      if (session !== current) return;
      showActionStatus("done", `${name} ${deactivate ? "deactivated" : "reactivated"}.`);
    } catch (error) {
      if (error instanceof Cancelled || session !== current) return;
      // The server's refusal is a sentence ("Cannot deactivate the only organization
      // owner."): shown as it is.
      showActionStatus("error", `Could not ${action} ${name}: ${error.message}`);
    }
  }

  // -- the session: register, then long-poll ----------------------------------------------

  let current = null;

  function backoffDelay(failures) {
    // Capped exponential backoff with "equal jitter": at least half the step, so retries
    // do not hammer a server that is starting, and spread, so clients do not stampede.
    const step = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 16));
    return step / 2 + Math.random() * (step / 2);
  }

  async function register(session) {
    const answer = await callApi(
      session,
      "POST",
      "/api/v1/register",
      {
        event_types: EVENT_TYPES,
        include_subscribers: true,
        client_capabilities: { deactivation_peer_events: true },
        apply_markdown: false,
      },
      REQUEST_TIMEOUT_MS,
    );
    session.queueId = answer.queue_id;
    if (session !== current) {
      // Signed out while the answer was on its way: drop the queue, show nothing.
      deleteQueue(session);
      throw new Cancelled();
    }
    session.lastEventId = answer.last_event_id;
    buildView(answer);
    loadHistory(session);
    dom.adminLink.hidden = !canManageUsers();
    if (answer.full_name) dom.whoami.textContent = `${answer.full_name} (${answer.email})`;
    dom.view.hidden = false;
  }

  async function poll(session, dontBlock) {
    const answer = await callApi(
      session,
      "GET",
      "/api/v1/events",
      { queue_id: session.queueId, last_event_id: session.lastEventId, dont_block: dontBlock },
      dontBlock ? REQUEST_TIMEOUT_MS : POLL_TIMEOUT_MS,
    );
    if (session !== current) throw new Cancelled(); // the view belongs to no one now
    for (const event of answer.events) {
      applyEvent(event);
      // Heartbeats carry an id too; acknowledging the largest one loses nothing.
      if (event.id > session.lastEventId) session.lastEventId = event.id;
    }
  }

  /** Worth repeating the same request: no answer, or a server briefly unavailable. */
  function isTransient(error) {
    return error instanceof NetworkError || (error instanceof ApiError && error.retryable);
  }

  /** The session's loop: runs until sign-out or until the server refuses the account. */
  async function run(session) {
    let failures = 0;
    let needsRegister = true;
    let badQueueInARow = 0;
    // After a failure the next poll does not block, so a server that is back is seen
    // (and shown as connected) at once rather than at the next event or heartbeat.
    let confirm = false;
    for (;;) {
      try {
        if (needsRegister) {
          setConnectionState(session.registered ? "reconnecting" : "connecting");
          await register(session);
          session.registered = true;
          needsRegister = false;
        } else {
          await poll(session, confirm);
          badQueueInARow = 0;
        }
        failures = 0;
        confirm = false;
        setConnectionState("connected");
      } catch (error) {
        if (error instanceof Cancelled || session !== current) return;
        if (error instanceof ApiError && error.status === 401) {
          // Invalid key, or this account was deactivated: nothing to retry.
          endSession(error.message);
          return;
        }
        if (error instanceof ApiError && error.code === "BAD_EVENT_QUEUE_ID") {
          // The queue expired or was dropped: a new queue and a rebuilt view. Re-register
          // at once the first time; a queue lost again right away gets the backoff.
          needsRegister = true;
          badQueueInARow += 1;
          setConnectionState("reconnecting", error.message);
          if (badQueueInARow === 1) continue;
        } else if (!isTransient(error)) {
          // A refusal that repeating the same poll cannot fix, or an event this page failed
          // to apply (a bug): start again from a new queue and a fresh view.
          if (!(error instanceof ApiError)) console.error("eventq: rebuilding the view:", error);
          needsRegister = true;
        }
        failures += 1;
        confirm = true;
        setConnectionState(session.registered ? "reconnecting" : "connecting", error.message);
        try {
          await sleep(backoffDelay(failures), session.abort.signal);
        } catch {
          return; // signed out while waiting
        }
      }
    }
  }

  function startSession(email, apiKey) {
    const session = {
      email,
      authorization: basicAuthorization(email, apiKey),
      abort: new AbortController(),
      queueId: null,
      lastEventId: -1,
      registered: false,
    };
    current = session;
    dom.form.hidden = true;
    dom.signInError.hidden = true;
    dom.whoami.textContent = email;
    dom.whoami.hidden = false;
    dom.signOut.hidden = false;
    run(session);
  }

  /** Forget the credentials and the view; delete the queue if there is one. */
  function endSession(errorMessage) {
    const session = current;
    if (!session) return;
    current = null;
    session.abort.abort();
    if (session.queueId) deleteQueue(session);
    resetView();
    dom.view.hidden = true;
    dom.whoami.hidden = true;
    dom.signOut.hidden = true;
    dom.form.hidden = false;
    dom.signInError.textContent = errorMessage || "";
    dom.signInError.hidden = !errorMessage;
    if (dom.confirmDialog.open) dom.confirmDialog.close();
    dom.adminLink.hidden = true;
    setConnectionState("signed out", errorMessage || "");
    (errorMessage ? dom.apiKey : dom.email).focus();
  }

  function deleteQueue(session) {
    // Best effort: an undeleted queue is garbage-collected when its lifespan ends.
    // keepalive lets the request outlive the page when it is being closed.
    const detached = { ...session, abort: new AbortController() };
    callApi(detached, "DELETE", "/api/v1/events", { queue_id: session.queueId }, 5_000, {
      keepalive: true,
    }).catch(() => {});
  }

  // -- wiring -----------------------------------------------------------------------------

  dom.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const email = dom.email.value.trim();
    const apiKey = dom.apiKey.value.trim();
    if (!email || !apiKey) return;
    // The key stays in the session object only, not in the DOM.
    dom.apiKey.value = "";
    startSession(email, apiKey);
  });

  dom.signOut.addEventListener("click", () => endSession(""));

  dom.channelList.addEventListener("submit", (event) => {
    const form = event.target.closest(".compose");
    const root = form && form.closest("[data-stream-id]");
    if (!root) return;
    event.preventDefault();
    const channel = view.channels.get(Number(root.dataset.streamId));
    if (channel && current) sendMessage(current, channel, form);
  });

  dom.peopleList.addEventListener("click", (event) => {
    const button = event.target.closest(".person-action");
    const row = button && button.closest("[data-person-id]");
    if (!row || !canManageUsers()) return;
    askToConfirm(Number(row.dataset.personId), button.dataset.action);
  });

  dom.confirmOk.addEventListener("click", () => {
    const change = pendingChange;
    pendingChange = null;
    dom.confirmDialog.close();
    if (change) changeActive(change);
  });

  dom.confirmCancel.addEventListener("click", () => dom.confirmDialog.close());

  // Escape, Cancel, or a sign-out: the question is void.
  dom.confirmDialog.addEventListener("close", () => {
    pendingChange = null;
  });

  window.addEventListener("pagehide", () => {
    if (current && current.queueId) deleteQueue(current);
  });

  setConnectionState("signed out");
})();
