// parlor's web chat client. Plain JS, no dependencies, embedded in the binary.
// Wire contract: docs/PROTOCOL.md. User data is only ever put in the DOM with
// textContent (never innerHTML).
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const ROOM_RE = /^[A-Za-z0-9_:\-][A-Za-z0-9_.:\-]{0,63}$/;
  const PAGE = 100; // messages per scroll-back page
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const OFFLINE_AFTER_ATTEMPTS = 6; // then say "offline" (still retrying)
  const LARGE_ROOM = 50; // above this many online users, show only the count
  const TYPING_SEND_MS = 1500; // send `typing` at most this often
  const TYPING_SHOW_MS = 4000; // show "… is typing" this long
  const WS_FAILURES_FOR_SSE = 2; // WebSocket attempts that never got `connected`, then SSE
  const store = {
    get(k, d) { try { const v = localStorage.getItem("parlor." + k); return v === null ? d : v; } catch { return d; } },
    set(k, v) { try { localStorage.setItem("parlor." + k, v); } catch { /* private mode */ } },
  };

  // ---- state -------------------------------------------------------------

  const S = {
    name: store.get("name", ""),
    format: store.get("format", "json") === "msgpack" ? "msgpack" : "json",
    me: "", // the user name the server confirmed
    ws: null,
    connId: 0, // increments per connection
    state: "connecting", // connecting | connected | reconnecting | offline
    attempt: 0,
    retryTimer: 0,
    retryAt: 0,
    heartbeatMs: 15000,
    lastRx: 0,
    rooms: new Map(), // name -> Room, in open order
    active: "",
    allRooms: [],
    transport: "ws", // ws | sse (WebSocket blocked: Server-Sent Events + POST)
    wsFailures: 0, // WebSocket attempts in a row that never got `connected`
    gotConnected: false,
    status: "online", // ours: online | away | busy
    autoAway: false, // set by the away timer, undone on focus
    awayTimer: 0,
    lastTypingSent: 0,
    token: "", // with a token URL: the JWT we connect with
    tokenUrl: new URLSearchParams(location.search).get("tokenUrl") || store.get("tokenUrl", ""),
    refreshTimer: 0,
  };
  const AWAY_AFTER_MS = Number(store.get("awayAfterMs", "180000")) || 180000;

  function newRoom(name) {
    return {
      name,
      epoch: null, // from `joined`
      last: 0, // newest sequence received from the server's ordered stream
      msgs: new Map(), // sequence -> message data
      els: new Map(), // sequence -> <li>
      pending: new Map(), // client id -> {id, content, sentOn, el, error}
      joined: false,
      joinConn: -1,
      awaitInitialHistory: false,
      loadingOlder: false,
      noOlder: false,
      unread: 0,
      read: 0, // our read marker (from `joined` and `read`), the unread count is last - read
      refused: "", // why the server refused the join (forbidden)
      typing: new Map(), // user -> timer
      status: new Map(), // user -> {status, text}
      es: null, // EventSource in SSE mode
      presence: new Map(), // user -> lastSeen
      presenceCount: 0,
      presenceTruncated: false,
      presenceTimer: 0,
    };
  }

  // ---- utilities -----------------------------------------------------------

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function clientId() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return "c" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function fmtTime(ms) {
    const d = new Date(ms);
    const now = new Date();
    const t = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    if (d.toDateString() === now.toDateString()) return t;
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + t;
  }

  function openRoomNames() { return Array.from(S.rooms.keys()); }

  function saveOpenRooms() {
    store.set("rooms", JSON.stringify(openRoomNames()));
    store.set("active", S.active);
  }

  // ---- connection ------------------------------------------------------------

  function who() {
    return S.token ? `token=${encodeURIComponent(S.token)}` : `user=${encodeURIComponent(S.name)}`;
  }

  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return `${proto}//${location.host}/ws?${who()}`;
  }

  // ---- tokens: with a token-issuing URL, connect with a JWT and refresh it
  // in time (a `refresh` frame on the open socket; SSE streams reopen).
  async function fetchToken() {
    const res = await fetch(S.tokenUrl, { credentials: "include", cache: "no-store" });
    if (!res.ok) throw new Error("token URL answered " + res.status);
    const text = (await res.text()).trim();
    let token = text;
    try { const j = JSON.parse(text); token = j.token || j.access_token || text; } catch { /* plain text */ }
    S.token = token;
    return token;
  }

  function tokenExpiry(token) {
    try {
      const payload = JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/")));
      return typeof payload.exp === "number" ? payload.exp * 1000 : 0;
    } catch { return 0; }
  }

  function scheduleRefresh() {
    clearTimeout(S.refreshTimer);
    const exp = tokenExpiry(S.token);
    if (!S.tokenUrl || !exp) return;
    // At four fifths of what is left, and at least 5 s before the end.
    const left = exp - Date.now();
    const wait = Math.max(1000, Math.min(left * 0.8, left - 5000));
    S.refreshTimer = setTimeout(async () => {
      try {
        const token = await fetchToken();
        if (S.transport === "ws") send({ type: "refresh", token });
        else for (const r of S.rooms.values()) openSse(r);
        scheduleRefresh();
      } catch (e) {
        console.warn("parlor: token refresh failed", e);
        S.refreshTimer = setTimeout(scheduleRefresh, 10000);
      }
    }, wait);
  }

  async function connect() {
    clearTimeout(S.retryTimer);
    S.retryTimer = 0;
    if (S.tokenUrl && !S.token) {
      try { await fetchToken(); scheduleRefresh(); } catch (e) { console.warn("parlor: no token", e); scheduleReconnect(); return; }
    }
    if (S.transport === "sse") {
      if (S.ws) { const ws = S.ws; S.ws = null; detach(ws); try { ws.close(); } catch { /* ignore */ } }
      connectSse();
      return;
    }
    S.gotConnected = false;
    if (S.ws) { detach(S.ws); try { S.ws.close(); } catch { /* ignore */ } }
    const proto = S.format === "msgpack" ? "parlor.v1.msgpack" : "parlor.v1.json";
    let ws;
    try {
      ws = new WebSocket(wsUrl(), [proto]);
    } catch (e) {
      scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    S.ws = ws;
    S.connId++;
    for (const r of S.rooms.values()) r.joined = false;
    if (S.state !== "reconnecting" && S.state !== "offline") setState("connecting");
    ws.onopen = () => { S.lastRx = Date.now(); };
    // A connection attempt that hangs (no answer at all) counts as failed.
    const conn = S.connId;
    setTimeout(() => {
      if (S.ws === ws && S.connId === conn && ws.readyState === WebSocket.CONNECTING) {
        S.ws = null;
        detach(ws);
        try { ws.close(); } catch { /* ignore */ }
        scheduleReconnect();
      }
    }, 10000);
    ws.onmessage = (ev) => {
      S.lastRx = Date.now();
      let f;
      try {
        f = typeof ev.data === "string" ? JSON.parse(ev.data) : MsgPack.decode(new Uint8Array(ev.data));
      } catch (e) {
        console.warn("parlor: undecodable frame", e);
        return;
      }
      if (f && typeof f.type === "string") handle(f);
    };
    ws.onclose = (ev) => {
      if (S.ws !== ws) return;
      S.ws = null;
      if (!S.gotConnected) {
        // Only when HTTP gets through and WebSockets do not (a proxy that
        // blocks them): chat over SSE + POST. A server that is down is not that.
        fetch("/healthz", { cache: "no-store" }).then((res) => res.ok, () => false).then((httpUp) => {
          if (!httpUp) { S.wsFailures = 0; return; }
          if (++S.wsFailures >= WS_FAILURES_FOR_SSE && S.transport === "ws") {
            S.transport = "sse";
            S.attempt = 0;
            connect();
          }
        });
      }
      for (const r of S.rooms.values()) r.joined = false;
      renderRoomList();
      if (ev.code === 4001) {
        setState("offline", "The server refused the connection (not authorised).");
      }
      scheduleReconnect();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  function detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  // ---- fallback transport: one EventSource per open room, POST to send -----

  function connectSse() {
    S.me = S.name;
    S.attempt = 0;
    setState("connected");
    $("fmt-current").textContent = "Connected with Server-Sent Events + POST (WebSocket unavailable).";
    renderMe();
    for (const r of S.rooms.values()) openSse(r);
    refreshRooms();
  }

  function openSse(r) {
    if (r.es) r.es.close();
    let url = `/api/rooms/${encodeURIComponent(r.name)}/events?${who()}&presence=1`;
    if (r.epoch !== null) url += `&since=${r.last}`;
    const es = new EventSource(url);
    r.es = es;
    for (const type of ["joined", "message", "presence", "presence_diff", "typing", "read", "error"]) {
      es.addEventListener(type, (ev) => {
        if (r.es !== es) return;
        let data;
        try { data = JSON.parse(ev.data); } catch { return; }
        S.lastRx = Date.now();
        if (type === "joined") r.awaitInitialHistory = false;
        handle({ type, data });
      });
    }
    es.onerror = () => {
      // EventSource reconnects by itself, with Last-Event-ID.
      if (r.es === es) { r.joined = false; renderRoomList(); }
    };
  }

  async function postPending(r, p) {
    p.sentOn = S.connId;
    try {
      const res = await fetch(`/api/rooms/${encodeURIComponent(r.name)}/messages`, {
        method: "POST",
        headers: Object.assign({ "content-type": "application/json" }, S.token ? { authorization: "Bearer " + S.token } : {}),
        body: JSON.stringify({ user: S.name, content: p.content, id: p.id }),
      });
      const body = await res.json().catch(() => ({}));
      if (res.ok) { onAck(p.id, { room: r.name, sequence: body.sequence }); return; }
      onError(p.id, (body && body.error) || { code: "internal" });
    } catch {
      p.sentOn = -1;
      setTimeout(() => { if (r.pending.has(p.id)) sendPending(r, p); }, 2000);
    }
  }

  function scheduleReconnect() {
    if (S.retryTimer) return;
    S.attempt++;
    // Exponential backoff with jitter: a random delay in [½, 1] × min(cap, base·2^n).
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (S.attempt - 1));
    const delay = Math.round(ceiling * (0.5 + Math.random() * 0.5));
    S.retryAt = Date.now() + delay;
    if (!navigator.onLine) setState("offline", "You are offline. Waiting for the network…");
    else if (S.attempt > OFFLINE_AFTER_ATTEMPTS) setState("offline");
    else setState("reconnecting");
    S.retryTimer = setTimeout(() => { S.retryTimer = 0; connect(); }, delay);
  }

  function retryNow() {
    clearTimeout(S.retryTimer);
    S.retryTimer = 0;
    connect();
  }

  function send(frame) {
    if (S.transport === "sse") return false;
    const ws = S.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || S.state !== "connected") return false;
    ws.send(S.format === "msgpack" ? MsgPack.encode(frame) : JSON.stringify(frame));
    return true;
  }

  // Dead-connection watchdog: 2 × heartbeatMs of silence closes the socket.
  setInterval(() => {
    if (S.ws && S.ws.readyState === WebSocket.OPEN && S.lastRx &&
        Date.now() - S.lastRx > 2 * S.heartbeatMs) {
      const ws = S.ws;
      S.ws = null;
      detach(ws);
      try { ws.close(); } catch { /* ignore */ }
      for (const r of S.rooms.values()) r.joined = false;
      scheduleReconnect();
    }
    if (S.state === "reconnecting" || S.state === "offline") renderBanner();
  }, 1000);

  window.addEventListener("offline", () => { if (S.state !== "connected") setState("offline", "You are offline. Waiting for the network…"); });
  window.addEventListener("online", () => { if (S.state !== "connected") retryNow(); });

  function setState(state, note) {
    S.state = state;
    S.stateNote = note || "";
    const conn = $("conn");
    conn.dataset.state = state;
    conn.dataset.transport = S.transport;
    $("conn-text").textContent = {
      connecting: "connecting…",
      connected: S.transport === "sse" ? "connected · SSE" : "connected · WebSocket",
      reconnecting: "reconnecting…",
      offline: "offline",
    }[state];
    conn.title = S.transport === "sse"
      ? "Server-Sent Events + HTTP POST (the WebSocket could not connect)"
      : "WebSocket";
    document.body.dataset.conn = state;
    renderBanner();
    renderRoomList();
    $("send").disabled = false; // messages queue while disconnected
  }

  function renderBanner() {
    const b = $("banner");
    b.dataset.state = S.state;
    if (S.state === "connected" || S.state === "connecting") { b.hidden = true; return; }
    b.hidden = false;
    const secs = Math.max(0, Math.ceil((S.retryAt - Date.now()) / 1000));
    const next = S.retryTimer ? (secs > 0 ? ` Next attempt in ${secs}s.` : " Trying now…") : " Trying now…";
    let text;
    if (S.state === "reconnecting") text = "Connection lost — reconnecting…" + next;
    else text = (S.stateNote || "Offline: the server cannot be reached.") + next;
    $("banner-text").textContent = text + pendingNote();
  }

  function pendingNote() {
    let n = 0;
    for (const r of S.rooms.values()) n += r.pending.size;
    return n ? ` ${n} unsent message${n === 1 ? "" : "s"} will be sent when back.` : "";
  }

  // ---- frames from the server -------------------------------------------------

  function handle(f) {
    const d = f.data || {};
    switch (f.type) {
      case "connected": return onConnected(d);
      case "joined": return onJoined(d);
      case "left": return;
      case "message": return onMessage(d, true);
      case "ack": return onAck(f.id, d);
      case "history": return onHistory(d);
      case "presence": return onPresence(d);
      case "presence_diff": return onPresenceDiff(d);
      case "typing": return onTyping(d);
      case "read": return onRead(d);
      case "refreshed": return scheduleRefresh();
      case "error": return onError(f.id, d);
      case "heartbeat": case "pong": return;
    }
  }

  function onConnected(d) {
    S.gotConnected = true;
    S.wsFailures = 0;
    S.me = d.user || S.name;
    if (typeof d.heartbeatMs === "number" && d.heartbeatMs > 0) S.heartbeatMs = d.heartbeatMs;
    S.attempt = 0;
    setState("connected");
    $("fmt-current").textContent = `Connected with ${d.format || S.format}${d.server ? " to " + d.server : ""}.`;
    renderMe();
    for (const r of S.rooms.values()) sendJoin(r);
    // A status lasts while we are connected: tell it again.
    if (S.status !== "online") send({ type: "status", status: S.status });
    refreshRooms();
  }

  function sendJoin(r) {
    if (S.transport === "sse") { openSse(r); return; }
    const frame = { type: "join", room: r.name, id: "j-" + r.name };
    if (r.epoch !== null) {
      // Re-join: ask for everything after what we have, in this log.
      frame.since = r.last;
      frame.epoch = r.epoch;
      r.awaitInitialHistory = false;
    } else {
      r.awaitInitialHistory = true;
    }
    send(frame);
    r.joinConn = S.connId;
  }

  function onJoined(d) {
    const r = S.rooms.get(d.room);
    if (!r) return;
    const rejoin = r.epoch !== null;
    if (rejoin && d.recovered === false && S.transport === "ws") {
      // The log we knew is gone or too far behind: start over from the replay.
      clearRoom(r);
    }
    r.epoch = d.epoch;
    r.joined = true;
    r.refused = "";
    if (typeof d.read === "number") r.read = Math.max(r.read, d.read);
    refreshRoomsSoon();
    if (!rejoin) r.last = Math.max(r.last, d.last || 0);
    renderRoomList();
    if (r.name === S.active) renderRoomHead();
    // Retry everything not yet acknowledged, with the same ids (the server
    // dedups them, so nothing shows twice).
    for (const p of r.pending.values()) {
      if (p.sentOn !== S.connId && !p.error) sendPending(r, p);
    }
    markRead(r);
  }

  // ---- read markers: the unread count is what came after our marker ----

  function unreadOf(r) {
    return Math.max(0, r.last - r.read);
  }

  function markRead(r) {
    if (r.name !== S.active || document.hidden || !r.joined || r.last <= r.read) return;
    r.read = r.last;
    send({ type: "read", room: r.name, sequence: r.last });
    renderRoomList();
  }

  function onRead(d) {
    const r = S.rooms.get(d.room);
    if (!r || d.user !== S.me || typeof d.sequence !== "number") return;
    // Another device or tab of ours read it.
    if (d.sequence > r.read) { r.read = d.sequence; renderRoomList(); }
  }

  // ---- typing --------------------------------------------------------------

  function onTyping(d) {
    const r = S.rooms.get(d.room);
    if (!r || !d.user || d.user === S.me) return;
    clearTimeout(r.typing.get(d.user));
    r.typing.set(d.user, setTimeout(() => { r.typing.delete(d.user); renderTyping(); }, TYPING_SHOW_MS));
    renderTyping();
  }

  function stopTyping(r, user) {
    if (!r.typing.has(user)) return;
    clearTimeout(r.typing.get(user));
    r.typing.delete(user);
    renderTyping();
  }

  function renderTyping() {
    const r = S.rooms.get(S.active);
    const t = $("typing");
    const users = r ? Array.from(r.typing.keys()).sort() : [];
    t.dataset.users = users.join(",");
    if (!users.length) { t.textContent = ""; return; }
    t.textContent = users.length === 1 ? `${users[0]} is typing…`
      : users.length === 2 ? `${users[0]} and ${users[1]} are typing…`
        : `${users.length} people are typing…`;
  }

  function typed() {
    const r = S.rooms.get(S.active);
    if (!r || !r.joined || Date.now() - S.lastTypingSent < TYPING_SEND_MS) return;
    S.lastTypingSent = Date.now();
    send({ type: "typing", room: r.name });
  }

  // ---- status ----------------------------------------------------------------

  function setStatus(status, auto) {
    S.autoAway = !!auto && status === "away";
    if (status === S.status) return;
    S.status = status;
    if (!auto) store.set("status", status === "away" ? "online" : status);
    $("status-select").value = status;
    $("me").dataset.status = status;
    send({ type: "status", status });
  }

  function startAwayTimer() {
    clearTimeout(S.awayTimer);
    S.awayTimer = setTimeout(() => { if (S.status === "online") setStatus("away", true); }, AWAY_AFTER_MS);
  }

  function backFromAway() {
    clearTimeout(S.awayTimer);
    if (S.autoAway) setStatus("online", false);
  }

  // ---- direct messages ---------------------------------------------------------

  function dmRoom(a, b) {
    const [x, y] = a < b ? [a, b] : [b, a];
    return `dm:${x}:${y}`;
  }

  // Whether a DM room can be named for us and `u` (PROTOCOL.md §4).
  function canDm(u) {
    const ok = (n) => /^[A-Za-z0-9_.\-]+$/.test(n);
    return ok(S.me) && ok(u) && ROOM_RE.test(dmRoom(S.me, u));
  }

  function dmPeer(name) {
    if (!name.startsWith("dm:")) return null;
    const [x, y] = name.slice(3).split(":");
    return x === S.me ? y : x;
  }

  function roomLabel(name) {
    const peer = dmPeer(name);
    return peer ? "@" + peer : "#" + name;
  }

  function clearRoom(r) {
    r.msgs.clear();
    for (const e of r.els.values()) e.remove();
    r.els.clear();
    r.last = 0;
    r.noOlder = false;
    if (r.name === S.active) renderOlder();
  }

  function insertMessage(r, m) {
    const seq = m.sequence;
    const old = r.msgs.get(seq);
    if (old) {
      if (old.provisional && !m.provisional) {
        r.msgs.set(seq, m);
        const e = r.els.get(seq);
        if (e) e.querySelector(".time").textContent = fmtTime(m.timestamp);
      }
      return false;
    }
    r.msgs.set(seq, m);
    const li = renderMessage(r, m);
    r.els.set(seq, li);
    const list = messagesListFor(r);
    // Usually appended; walk back to find the place for out-of-order inserts.
    let after = list.lastElementChild;
    while (after && Number(after.dataset.seq) > seq) after = after.previousElementSibling;
    if (after) after.after(li); else list.prepend(li);
    return true;
  }

  // Each room keeps its own <ol>; only the active one is in the document.
  function messagesListFor(r) {
    if (!r.list) {
      r.list = el("ol", "messages");
      r.list.dataset.room = r.name;
      r.pendingList = el("ol", "messages pending-list");
      r.pendingList.dataset.room = r.name;
    }
    return r.list;
  }

  function renderMessage(r, m) {
    const li = el("li", "msg");
    li.dataset.seq = String(m.sequence);
    li.dataset.user = m.user;
    const own = m.user === S.me;
    if (own) { li.classList.add("own"); li.dataset.own = "true"; }
    const head = el("div", "meta");
    head.append(el("span", "user", m.user));
    const time = el("time", "time", fmtTime(m.timestamp));
    time.dateTime = new Date(m.timestamp).toISOString();
    time.title = new Date(m.timestamp).toLocaleString();
    head.append(time, el("span", "seq", "#" + m.sequence));
    li.append(head, el("div", "content", m.content));
    return li;
  }

  function onMessage(d, live) {
    const r = S.rooms.get(d.room);
    if (!r || typeof d.sequence !== "number") return;
    if (live) r.last = Math.max(r.last, d.sequence);
    if (live && d.user === S.me) {
      // Our own copy came back before its ack (or the ack was lost with the
      // connection): show it once, keep the pending entry for the retry.
      for (const p of r.pending.values()) {
        if (!p.echoed && p.sentOn >= 0 && p.content === d.content) {
          p.echoed = d.sequence;
          p.el.hidden = true;
          break;
        }
      }
    }
    const stick = r.name === S.active && nearBottom();
    const added = insertMessage(r, d);
    if (live) stopTyping(r, d.user);
    if (added && live && d.user === S.me && r.read === d.sequence - 1) r.read = d.sequence;
    if (added && live) { markRead(r); renderRoomList(); }
    if (stick) scrollToBottom();
    if (r.name === S.active) renderOlder();
  }

  function onAck(id, d) {
    const r = S.rooms.get(d.room);
    if (!r || !id) return;
    const p = r.pending.get(id);
    if (!p) return;
    r.pending.delete(id);
    p.el.remove();
    if (S.transport === "sse") r.last = Math.max(r.last, d.sequence);
    // The own copy may come before or after the ack; show it now so the
    // message never disappears, the broadcast then replaces it in place.
    insertMessage(r, {
      id, room: r.name, user: S.me, content: p.content,
      sequence: d.sequence, timestamp: p.at, provisional: true,
    });
    if (r.name === S.active) scrollToBottom();
    renderBanner();
  }

  function onHistory(d) {
    const r = S.rooms.get(d.room);
    if (!r) return;
    const msgs = Array.isArray(d.messages) ? d.messages : [];
    if (r.awaitInitialHistory) {
      r.awaitInitialHistory = false;
      for (const m of msgs) {
        insertMessage(r, m);
        r.last = Math.max(r.last, m.sequence);
      }
      r.noOlder = msgs.length === 0 ? r.last === 0 : oldest(r) <= 1;
      if (r.name === S.active) { scrollToBottom(); renderOlder(); }
      return;
    }
    // A scroll-back page: keep the view where it was while older ones go on top.
    const sc = $("scroller");
    const active = r.name === S.active;
    const before = active ? sc.scrollHeight - sc.scrollTop : 0;
    let added = 0;
    for (const m of msgs) if (insertMessage(r, m)) added++;
    r.loadingOlder = false;
    if (added === 0 && r.requestedOlderSince !== undefined && r.requestedOlderSince === 0) r.noOlder = true;
    if (oldest(r) <= 1) r.noOlder = true;
    if (active) {
      sc.scrollTop = sc.scrollHeight - before;
      renderOlder();
      // Still at the top (short page)? Keep going.
      requestAnimationFrame(maybeLoadOlder);
    }
  }

  function oldest(r) {
    let min = Infinity;
    for (const s of r.msgs.keys()) if (s < min) min = s;
    return min;
  }

  function loadOlder(r) {
    if (r.loadingOlder || r.noOlder || !r.joined || r.awaitInitialHistory) return;
    const first = r.msgs.size ? oldest(r) : r.last + 1;
    if (first <= 1) { r.noOlder = true; renderOlder(); return; }
    const since = Math.max(0, first - 1 - PAGE);
    const limit = first - 1 - since;
    r.loadingOlder = true;
    r.requestedOlderSince = since;
    if (S.transport === "sse") {
      fetch(`/api/rooms/${encodeURIComponent(r.name)}/messages?since=${since}&limit=${limit}&${who()}`)
        .then((res) => res.json())
        .then((page) => onHistory({ room: r.name, messages: page.messages || [] }))
        .catch(() => { r.loadingOlder = false; });
    } else if (!send({ type: "history", room: r.name, since, limit })) r.loadingOlder = false;
    renderOlder();
  }

  function renderOlder() {
    const r = S.rooms.get(S.active);
    const o = $("older");
    if (!r) { o.textContent = ""; return; }
    if (r.loadingOlder) o.textContent = "Loading older messages…";
    else if (r.noOlder || (r.msgs.size && oldest(r) <= 1)) o.textContent = r.msgs.size ? "Beginning of #" + r.name : "No messages yet — say hello!";
    else if (r.msgs.size) o.textContent = "Scroll up for older messages";
    else o.textContent = "";
    o.dataset.state = r.loadingOlder ? "loading" : r.noOlder ? "start" : "more";
  }

  function onPresence(d) {
    const r = S.rooms.get(d.room);
    if (!r) return;
    r.presence = new Map();
    r.status = new Map();
    for (const u of d.users || []) {
      r.presence.set(u.user, u.lastSeen);
      r.status.set(u.user, { status: u.status || "online", text: u.text || "" });
    }
    r.presenceCount = typeof d.count === "number" ? d.count : r.presence.size;
    r.presenceTruncated = !!d.truncated;
    clearInterval(r.presenceTimer);
    // Big rooms send no diffs: poll their count instead.
    if (r.presenceTruncated || r.presenceCount > 1000) {
      r.presenceTimer = setInterval(() => send({ type: "presence", room: r.name }), 30000);
    }
    if (r.name === S.active) renderPresence();
  }

  function onPresenceDiff(d) {
    const r = S.rooms.get(d.room);
    if (!r) return;
    for (const u of d.joins || []) {
      if (!r.presence.has(u)) { r.presence.set(u, Date.now()); r.presenceCount++; }
    }
    for (const u of d.leaves || []) {
      if (r.presence.delete(u) || r.presenceTruncated) r.presenceCount = Math.max(0, r.presenceCount - 1);
      r.status.delete(u);
      stopTyping(r, u);
    }
    for (const u of d.joins || []) if (!r.status.has(u)) r.status.set(u, { status: "online", text: "" });
    for (const c of d.changes || []) r.status.set(c.user, { status: c.status || "online", text: c.text || "" });
    if (r.name === S.active) renderPresence();
  }

  function onError(id, d) {
    const code = d.code || "error";
    if (id && id.startsWith("j-") && S.rooms.has(id.slice(2))) {
      const r = S.rooms.get(id.slice(2));
      r.refused = d.message || code;
      renderRoomList();
      if (r.name === S.active) renderRoomHead();
      toast(`${code === "forbidden" ? "Not allowed" : "Cannot join"}: ${d.message || ""}`);
      return;
    }
    if (id) {
      for (const r of S.rooms.values()) {
        const p = r.pending.get(id);
        if (!p) continue;
        if (code === "rate_limited" || code === "internal" || code === "not_joined") {
          // Transient: try again shortly with the same id.
          p.sentOn = -1;
          setTimeout(() => { if (r.pending.has(id) && r.joined) sendPending(r, p); }, 1000 + Math.random() * 1000);
        } else {
          p.error = d.message || code;
          p.el.classList.add("failed");
          p.el.querySelector(".state").textContent = "not sent: " + p.error;
          p.el.querySelector(".actions").hidden = false;
        }
        return;
      }
    }
    if (code === "invalid_room" || code === "forbidden") {
      toast(`${code === "forbidden" ? "Not allowed" : "Invalid room"}: ${d.message || ""}`);
    } else if (code !== "rate_limited") {
      console.warn("parlor error", d);
    }
  }

  function toast(text) {
    const t = el("div", "toast", text);
    document.body.append(t);
    setTimeout(() => t.remove(), 5000);
  }

  // ---- sending ---------------------------------------------------------------

  function sendMessage(content) {
    const r = S.rooms.get(S.active);
    if (!r || !content.trim()) return;
    const p = { id: clientId(), content, sentOn: -1, at: Date.now(), error: null };
    p.el = renderPending(r, p);
    r.pending.set(p.id, p);
    messagesListFor(r);
    r.pendingList.append(p.el);
    scrollToBottom();
    if (r.joined) sendPending(r, p);
    renderBanner();
  }

  function sendPending(r, p) {
    if (S.transport === "sse") { postPending(r, p); return; }
    if (send({ type: "message", id: p.id, data: { room: r.name, content: p.content } })) {
      p.sentOn = S.connId;
    }
  }

  function renderPending(r, p) {
    const li = el("li", "msg own pending");
    li.dataset.pendingId = p.id;
    const head = el("div", "meta");
    head.append(el("span", "user", S.me || S.name), el("span", "state", "sending…"));
    const actions = el("span", "actions");
    actions.hidden = true;
    const retry = el("button", "link-btn", "retry");
    retry.type = "button";
    retry.onclick = () => {
      p.error = null;
      li.classList.remove("failed");
      li.querySelector(".state").textContent = "sending…";
      actions.hidden = true;
      if (r.joined) sendPending(r, p);
    };
    const drop = el("button", "link-btn", "discard");
    drop.type = "button";
    drop.onclick = () => { r.pending.delete(p.id); li.remove(); renderBanner(); };
    actions.append(retry, drop);
    head.append(actions);
    li.append(head, el("div", "content", p.content));
    return li;
  }

  // ---- rooms -------------------------------------------------------------------

  function openRoom(name, activate = true) {
    if (!ROOM_RE.test(name)) { toast("Room names are 1–64 of A-Z a-z 0-9 _ . : - and do not start with a dot."); return; }
    let r = S.rooms.get(name);
    if (!r) {
      r = newRoom(name);
      S.rooms.set(name, r);
      if (S.state === "connected") sendJoin(r);
    }
    if (activate) activate_(name);
    saveOpenRooms();
    renderRoomList();
  }

  function closeRoom(name) {
    const r = S.rooms.get(name);
    if (!r) return;
    if (r.pending.size && !confirm(`${r.pending.size} message(s) in #${name} are not sent yet. Leave anyway?`)) return;
    send({ type: "leave", room: name });
    if (r.es) r.es.close();
    clearInterval(r.presenceTimer);
    S.rooms.delete(name);
    if (S.active === name) {
      const next = openRoomNames()[0] || "";
      activate_(next);
    }
    saveOpenRooms();
    renderRoomList();
    refreshRooms();
  }

  function activate_(name) {
    S.active = name;
    const r = S.rooms.get(name);
    $("empty").hidden = !!r;
    $("room-view").hidden = !r;
    closeMenu();
    if (!r) { saveOpenRooms(); renderRoomList(); return; }
    markRead(r);
    messagesListFor(r);
    $("messages").replaceWith(r.list);
    r.list.id = "messages";
    $("pending").replaceWith(r.pendingList);
    r.pendingList.id = "pending";
    for (const other of S.rooms.values()) {
      if (other !== r && other.list) { other.list.removeAttribute("id"); other.pendingList.removeAttribute("id"); }
    }
    renderRoomHead();
    renderPresence();
    renderOlder();
    renderTyping();
    scrollToBottom();
    saveOpenRooms();
    renderRoomList();
    if (window.matchMedia("(min-width: 761px)").matches) $("input").focus();
  }

  function renderRoomHead() {
    const r = S.rooms.get(S.active);
    if (!r) return;
    $("room-title").textContent = roomLabel(r.name);
    $("room-view").dataset.room = r.name;
    $("room-view").dataset.joined = r.joined ? "true" : "false";
    $("room-view").dataset.refused = r.refused ? "true" : "false";
    $("refused").hidden = !r.refused;
    $("refused").textContent = r.refused ? `You cannot open this room: ${r.refused}` : "";
  }

  function renderRoomList() {
    const ul = $("open-rooms");
    ul.replaceChildren();
    const dms = $("dm-rooms");
    dms.replaceChildren();
    for (const r of S.rooms.values()) {
      const li = el("li", "room-item");
      li.dataset.room = r.name;
      if (r.name === S.active) li.classList.add("active");
      const b = el("button", "room-btn");
      b.type = "button";
      b.append(el("span", "room-name", roomLabel(r.name)));
      if (r.refused) b.append(el("span", "muted small", " not allowed"));
      else if (!r.joined && S.state === "connected") b.append(el("span", "muted small", " joining…"));
      const unread = unreadOf(r);
      if (unread) {
        const badge = el("span", "badge", unread > 99 ? "99+" : String(unread));
        badge.dataset.unread = String(unread);
        badge.title = `${unread} unread`;
        b.append(badge);
      }
      b.onclick = () => activate_(r.name);
      const x = el("button", "close-btn", "×");
      x.type = "button";
      x.title = "Leave #" + r.name;
      x.setAttribute("aria-label", "Leave " + r.name);
      x.onclick = () => closeRoom(r.name);
      li.append(b, x);
      (r.name.startsWith("dm:") ? dms : ul).append(li);
    }
    $("no-open").hidden = ul.children.length > 0;
    $("dm-section").hidden = dms.children.length === 0;
    renderAllRooms();
    let unread = 0;
    for (const r of S.rooms.values()) unread += unreadOf(r);
    document.title = (unread ? `(${unread}) ` : "") + (S.active ? `#${S.active} · parlor` : "parlor");
    $("menu-toggle").dataset.unread = unread ? "true" : "false";
    if ($("room-view").dataset.room === S.active) {
      const r = S.rooms.get(S.active);
      if (r) $("room-view").dataset.joined = r.joined ? "true" : "false";
    }
  }

  function renderAllRooms() {
    const ul = $("all-rooms");
    ul.replaceChildren();
    for (const info of S.allRooms) {
      if (info.room.startsWith("dm:")) continue;
      const li = el("li", "room-item");
      li.dataset.room = info.room;
      const b = el("button", "room-btn");
      b.type = "button";
      b.append(el("span", "room-name", "#" + info.room));
      const n = el("span", "members", `${info.members} online`);
      n.title = `${info.members} member(s), ${info.connections} connection(s), ${info.last} message(s)`;
      b.append(n);
      if (S.rooms.has(info.room)) li.classList.add("open");
      b.onclick = () => openRoom(info.room);
      li.append(b);
      ul.append(li);
    }
    $("no-rooms").hidden = S.allRooms.length > 0;
  }

  const ROOM_PAGES = 5;
  let roomsTimer = 0;
  let roomsSoon = 0;
  function refreshRoomsSoon() {
    clearTimeout(roomsSoon);
    roomsSoon = setTimeout(refreshRooms, 300);
  }
  async function refreshRooms() {
    clearTimeout(roomsTimer);
    roomsTimer = setTimeout(refreshRooms, 15000);
    try {
      // The list comes in pages (in name order); a sidebar needs no more
      // than the first few.
      const list = [];
      let after = "";
      for (let page = 0; page < ROOM_PAGES; page++) {
        const q = "?limit=200&user=" + encodeURIComponent(S.me || S.name) +
          (after ? "&after=" + encodeURIComponent(after) : "");
        const res = await fetch("/api/rooms" + q, { cache: "no-store" });
        if (!res.ok) return;
        const body = await res.json();
        if (!body || !Array.isArray(body.rooms)) return;
        list.push(...body.rooms);
        if (!body.next) break;
        after = body.next;
      }
      list.sort((a, b) => b.members - a.members || (a.room < b.room ? -1 : 1));
      S.allRooms = list;
      renderAllRooms();
    } catch { /* offline: keep the old list */ }
  }

  // ---- presence ------------------------------------------------------------------

  function renderPresence() {
    const r = S.rooms.get(S.active);
    if (!r) return;
    const count = r.presenceCount;
    $("presence-toggle").textContent = `${count} online`;
    $("presence-n").textContent = `(${count})`;
    const ul = $("presence-list");
    ul.replaceChildren();
    const note = $("presence-note");
    if (r.presenceTruncated || count > LARGE_ROOM) {
      note.hidden = false;
      note.textContent = `${count} people are here — too many to list.`;
      $("presence").dataset.mode = "count";
      return;
    }
    note.hidden = true;
    $("presence").dataset.mode = "list";
    const users = Array.from(r.presence.keys()).sort((a, b) =>
      (b === S.me) - (a === S.me) || a.localeCompare(b));
    for (const u of users) {
      const li = el("li", "person");
      li.dataset.user = u;
      const st = r.status.get(u) || { status: "online", text: "" };
      li.dataset.status = st.status;
      const dot = el("span", "dot", "");
      dot.title = st.status;
      li.append(dot, el("span", "pname", u));
      if (u === S.me) li.append(el("span", "muted small", " (you)"));
      if (st.status !== "online" || st.text) {
        li.append(el("span", "pstatus muted small", " " + st.status + (st.text ? ": " + st.text : "")));
      }
      if (u !== S.me && !r.name.startsWith("dm:") && canDm(u)) {
        const dm = el("button", "link-btn dm-btn", "DM");
        dm.type = "button";
        dm.title = "Direct message " + u;
        dm.onclick = () => openRoom(dmRoom(S.me, u));
        li.append(dm);
      }
      ul.append(li);
    }
  }

  // ---- scrolling -------------------------------------------------------------------

  function nearBottom() {
    const sc = $("scroller");
    return sc.scrollHeight - sc.scrollTop - sc.clientHeight < 80;
  }

  function scrollToBottom() {
    const sc = $("scroller");
    sc.scrollTop = sc.scrollHeight;
  }

  function maybeLoadOlder() {
    const r = S.rooms.get(S.active);
    if (!r) return;
    const sc = $("scroller");
    if (sc.scrollTop < 60 && sc.scrollHeight > 0) loadOlder(r);
  }

  // ---- name, settings, menu ------------------------------------------------------------

  function renderMe() {
    $("me").textContent = S.me || S.name;
    $("me").hidden = !(S.me || S.name);
  }

  function askName(initial) {
    const dlg = $("name-dialog");
    $("name-input").value = initial || "";
    if (!dlg.open) dlg.showModal();
    $("name-input").focus();
  }

  function closeMenu() {
    document.body.classList.remove("menu-open");
    $("menu-toggle").setAttribute("aria-expanded", "false");
  }

  function start() {
    $("name-form").addEventListener("submit", (e) => {
      const v = $("name-input").value.trim();
      if (!v || /[\u0000-\u001f\u007f]/.test(v)) { e.preventDefault(); return; }
      const changed = v !== S.name;
      S.name = v;
      store.set("name", v);
      renderMe();
      if (changed || !S.ws) {
        // A new name needs a new connection (the name is part of it).
        S.attempt = 0;
        setState("connecting");
        connect();
      }
    });
    $("name-dialog").addEventListener("cancel", (e) => { if (!S.name) e.preventDefault(); });
    $("me").onclick = () => askName(S.name);

    $("settings-toggle").onclick = () => {
      const s = $("settings");
      s.hidden = !s.hidden;
      $("settings-toggle").setAttribute("aria-expanded", String(!s.hidden));
    };
    $("fmt-msgpack").checked = S.format === "msgpack";
    $("fmt-msgpack").onchange = (e) => {
      S.format = e.target.checked ? "msgpack" : "json";
      store.set("format", S.format);
      S.attempt = 0;
      connect();
    };
    $("banner-retry").onclick = retryNow;
    $("menu-toggle").onclick = () => {
      const open = document.body.classList.toggle("menu-open");
      $("menu-toggle").setAttribute("aria-expanded", String(open));
      if (open) refreshRooms();
    };
    $("presence-toggle").onclick = () => {
      const stick = nearBottom();
      const open = document.body.classList.toggle("presence-open");
      $("presence-toggle").setAttribute("aria-expanded", String(open));
      if (stick) scrollToBottom();
    };
    $("refresh-rooms").onclick = refreshRooms;
    $("main").addEventListener("click", () => { if (document.body.classList.contains("menu-open")) closeMenu(); });
    document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeMenu(); });
    $("leave-room").onclick = () => closeRoom(S.active);

    $("join-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = $("join-input").value.trim();
      if (!v) return;
      if (!ROOM_RE.test(v)) { toast("Room names are 1–64 of A-Z a-z 0-9 _ . : - and do not start with a dot."); return; }
      $("join-input").value = "";
      openRoom(v);
    });

    const input = $("input");
    const autosize = () => {
      input.style.height = "auto";
      input.style.height = Math.min(input.scrollHeight, 160) + "px";
    };
    input.addEventListener("input", () => { autosize(); if (input.value) typed(); });
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = input.value;
      if (!v.trim()) return;
      sendMessage(v);
      input.value = "";
      autosize();
    });
    $("scroller").addEventListener("scroll", maybeLoadOlder, { passive: true });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) {
        const r = S.rooms.get(S.active);
        if (r) markRead(r);
      }
    });
    $("status-select").value = S.status = store.get("status", "online") === "busy" ? "busy" : "online";
    $("me").dataset.status = S.status;
    $("status-select").onchange = (e) => setStatus(e.target.value, false);
    window.addEventListener("blur", startAwayTimer);
    window.addEventListener("focus", backFromAway);
    if (!document.hasFocus()) startAwayTimer();

    let saved = [];
    try { saved = JSON.parse(store.get("rooms", "[]")); } catch { /* ignore */ }
    for (const n of Array.isArray(saved) ? saved : []) if (typeof n === "string" && ROOM_RE.test(n)) S.rooms.set(n, newRoom(n));
    const act = store.get("active", "");
    activate_(S.rooms.has(act) ? act : openRoomNames()[0] || "");
    renderRoomList();
    refreshRooms();
    renderMe();
    if (S.name) connect(); else { setState("connecting"); askName(""); }
  }

  // Test and debugging hook: a read-only view of the client's state.
  window.parlor = {
    get state() { return S.state; },
    get me() { return S.me; },
    get format() { return S.format; },
    get transport() { return S.transport; },
    get status() { return S.status; },
    room(name) {
      const r = S.rooms.get(name);
      return r && { last: r.last, read: r.read, unread: unreadOf(r), epoch: r.epoch, joined: r.joined, refused: r.refused, pending: r.pending.size, sequences: Array.from(r.msgs.keys()).sort((a, b) => a - b) };
    },
  };

  start();
})();
