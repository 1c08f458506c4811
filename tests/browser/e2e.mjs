// End-to-end test of parlor's web client in headless Chromium.
//
//   node e2e.mjs PATH/TO/parlor      (run.sh installs what is missing and calls this)
//
// Starts parlor (redb store, fresh data dir, free port), drives two browser
// contexts (alice on a desktop viewport with JSON, bob on a phone viewport
// switched to MessagePack), kills the server with SIGKILL and restarts it on
// the same data dir and port, and checks every message shows once, in order.
// Screenshots go to target/browser/. Exit code 0 only when everything held.

import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "../..");
const BIN = path.resolve(process.argv[2] || path.join(ROOT, "target/release/parlor"));
const OUT = path.join(ROOT, "target/browser");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PIDFILE = process.env.PARLOR_PIDFILE || "";
const STORE = process.env.PARLOR_E2E_STORE || "redb";
const OVERALL_MS = 220_000;
const WAIT = 10_000; // default for every wait

const ROOM = "e2e-lobby";
const SIDE = "e2e-side";
const HIST = "e2e-history";
const XSS = "<img src=x onerror=alert(1)>";

fs.mkdirSync(OUT, { recursive: true });
const started = Date.now();
const log = (...a) => console.log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s]`, ...a);

let server = null;
let browser = null;
const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "parlor-e2e-"));
const serverLog = fs.openSync(path.join(OUT, "server.log"), "w");
const problems = []; // page errors, alerts: fail at the end
const pages = []; // [name, page], for screenshots on failure

function killServer() {
  if (server && server.exitCode === null && server.signalCode === null) {
    try { server.kill("SIGKILL"); } catch { /* gone */ }
  }
}
process.on("exit", () => {
  killServer();
  fs.rmSync(dataDir, { recursive: true, force: true });
});
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => { killServer(); process.exit(130); });

const overall = setTimeout(() => {
  console.error(`FAIL: the whole test took longer than ${OVERALL_MS / 1000}s`);
  killServer();
  process.exit(2);
}, OVERALL_MS);
overall.unref();

function assert(cond, msg) {
  if (!cond) throw new Error("assertion failed: " + msg);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function startServer(port) {
  // The history bot posts 250 messages through the open API as one user, as
  // fast as it can: above the per-user message rate a real user gets.
  const args = ["serve", "--store", STORE, "--data-dir", dataDir, "--addr", `127.0.0.1:${port}`,
    "--rate-per-sec", "2000", "--rate-burst", "2000"];
  server = spawn(BIN, args, {
    stdio: ["ignore", serverLog, serverLog],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
  });
  if (PIDFILE) fs.writeFileSync(PIDFILE, String(server.pid));
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    if (server.exitCode !== null) throw new Error(`parlor exited with ${server.exitCode}; see target/browser/server.log`);
    try {
      const r = await fetch(`http://127.0.0.1:${port}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (r.ok) return;
    } catch { /* not yet */ }
    await sleep(100);
  }
  throw new Error("parlor did not become healthy within 15s");
}

async function api(base, p, opts = {}) {
  const r = await fetch(base + p, { ...opts, signal: AbortSignal.timeout(5000) });
  if (!r.ok) throw new Error(`${opts.method || "GET"} ${p}: ${r.status} ${await r.text()}`);
  return r.json();
}

async function newPage(name, contextOptions) {
  const ctx = await browser.newContext(contextOptions);
  const page = await ctx.newPage();
  page.setDefaultTimeout(WAIT);
  pages.push([name, page]);
  page.on("pageerror", (e) => problems.push(`${name}: page error: ${e.message}`));
  page.on("dialog", async (d) => {
    problems.push(`${name}: a dialog opened (${d.type()}: ${d.message()})`);
    await d.dismiss().catch(() => {});
  });
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") fs.appendFileSync(path.join(OUT, "console.log"), `${name} ${m.type()}: ${m.text()}\n`);
  });
  return page;
}

// Opens the side menu on a phone-sized viewport (no-op on a wide one).
async function withMenu(page, fn) {
  const toggle = page.locator("#menu-toggle");
  const narrow = await toggle.isVisible();
  if (narrow) {
    await toggle.click();
    await page.locator("#sidebar").evaluate((e) => new Promise((r) => setTimeout(r, 200)));
  }
  await fn();
}

async function joinRoom(page, room) {
  await withMenu(page, async () => {
    await page.locator("#join-input").fill(room);
    await page.locator("#join-input").press("Enter");
  });
  await page.locator(`#room-view[data-room="${room}"][data-joined="true"]`).waitFor({ timeout: WAIT });
}

async function switchRoom(page, room) {
  await withMenu(page, async () => {
    await page.locator(`#open-rooms li[data-room="${room}"] .room-btn`).click();
  });
  await page.locator(`#room-view[data-room="${room}"]`).waitFor({ timeout: WAIT });
}

async function sendAndWaitAck(page, text) {
  await page.locator("#input").fill(text);
  await page.locator("#input").press("Enter");
  await page.waitForFunction(
    (t) => document.querySelectorAll("#pending li").length === 0 &&
      Array.from(document.querySelectorAll("#messages li.own .content")).some((e) => e.textContent === t),
    text, { timeout: WAIT });
}

async function shownMessages(page) {
  return page.$$eval("#messages li[data-seq]", (els) => els.map((e) => ({
    seq: Number(e.dataset.seq),
    user: e.dataset.user,
    content: e.querySelector(".content").textContent,
    own: e.classList.contains("own"),
  })));
}

async function waitForSeqCount(page, n, timeout = WAIT) {
  await page.waitForFunction(
    (n) => document.querySelectorAll("#messages li[data-seq]").length >= n, n, { timeout });
}

function checkInOrder(label, shown, expected) {
  const seqs = shown.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert(seqs[i] > seqs[i - 1], `${label}: sequences not strictly increasing at ${i}: ${seqs.join(",")}`);
  }
  assert(new Set(seqs).size === seqs.length, `${label}: duplicate sequence in ${seqs.join(",")}`);
  assert(seqs.length === expected.length,
    `${label}: shows ${seqs.length} messages, the server has ${expected.length} (${seqs.join(",")})`);
  expected.forEach((m, i) => {
    assert(shown[i].seq === m.sequence, `${label}: position ${i} is #${shown[i].seq}, expected #${m.sequence}`);
    assert(shown[i].user === m.user && shown[i].content === m.content,
      `${label}: #${m.sequence} shows ${JSON.stringify(shown[i])}, the server has ${JSON.stringify(m)}`);
  });
}

async function shot(page, name) {
  const file = path.join(OUT, name);
  await page.screenshot({ path: file, timeout: WAIT });
  log("screenshot", path.relative(ROOT, file));
}

async function main() {
  assert(fs.existsSync(BIN), `no parlor binary at ${BIN}`);
  assert(fs.existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}`);
  fs.rmSync(path.join(OUT, "console.log"), { force: true });
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  await startServer(port);
  log(`parlor up on ${base} (store ${STORE}, data ${dataDir})`);

  // launch() gives the browser a new, empty profile directory of its own.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    timeout: 30_000,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  log("chromium", browser.version());

  const a = await newPage("alice", { viewport: { width: 1200, height: 760 } });
  const b = await newPage("bob", { viewport: { width: 390, height: 800 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });

  // --- name prompt, join ---------------------------------------------------------
  for (const [page, name] of [[a, "alice"], [b, "bob"]]) {
    await page.goto(base + "/", { timeout: WAIT });
    await page.locator("#name-dialog[open] #name-input").fill(name);
    if (page === b) await shot(b, "page-b-name-prompt.png");
    await page.locator("#name-input").press("Enter");
    await page.waitForFunction(() => window.parlor && window.parlor.state === "connected", null, { timeout: WAIT });
    assert(await page.evaluate(() => localStorage.getItem("parlor.name")) === name, "name remembered in localStorage");
    await joinRoom(page, ROOM);
  }
  log("both joined", ROOM);

  // Bob switches to MessagePack with the settings toggle (a reconnect + re-join).
  await b.locator("#settings-toggle").click();
  await b.locator("#fmt-msgpack").check();
  await b.waitForFunction(() => window.parlor.state === "connected" && window.parlor.format === "msgpack" &&
    /msgpack/.test(document.getElementById("fmt-current").textContent), null, { timeout: WAIT });
  await b.locator("#settings-toggle").click();
  await b.locator(`#room-view[data-room="${ROOM}"][data-joined="true"]`).waitFor({ timeout: WAIT });
  log("bob now on", await b.locator("#fmt-current").textContent());

  // --- presence --------------------------------------------------------------------
  for (const page of [a, b]) {
    for (const u of ["alice", "bob"]) {
      await page.locator(`#presence-list li[data-user="${u}"]`).waitFor({ state: "attached", timeout: WAIT });
    }
  }
  assert((await a.locator("#presence-toggle").textContent()).includes("2 online"), "alice sees 2 online");
  await a.locator("#presence").waitFor({ state: "visible" });
  log("presence shows alice and bob on both pages");

  // --- chat ------------------------------------------------------------------------
  const longText = "This is a long message to check that text wraps instead of overflowing the bubble. " +
    "Supercalifragilisticexpialidocious".repeat(4) + " — and it keeps going for a while so it takes a few lines.";
  const script = [
    [a, "Hello from alice!"],
    [b, "Hi alice, bob here (on my phone)."],
    [a, longText],
    [b, XSS],
    [a, "<b>not bold</b> & <script>alert(2)</script>"],
    [b, "Looks like HTML stays text. Grüße, ça va?"],
  ];
  for (const [page, text] of script) {
    await sendAndWaitAck(page, text);
  }
  let expected = (await api(base, `/api/rooms/${ROOM}/messages?limit=1000`)).messages;
  assert(expected.length === script.length, `server stored ${expected.length} messages`);
  for (const [page, me] of [[a, "alice"], [b, "bob"]]) {
    await waitForSeqCount(page, expected.length);
    const shown = await shownMessages(page);
    checkInOrder(me, shown, expected);
    for (const m of shown) assert(m.own === (m.user === me), `${me}: own mark wrong on #${m.seq}`);
    await page.locator("#messages li[data-seq] .seq", { hasText: "#1" }).first().waitFor({ state: "attached" });
  }
  log("both pages show", expected.map((m) => m.sequence).join(","), "with own messages marked");

  // --- content is text ----------------------------------------------------------------
  for (const [page, me] of [[a, "alice"], [b, "bob"]]) {
    assert(await page.locator("img").count() === 0, `${me}: an <img> element was created`);
    assert(await page.locator("#messages script, #messages b").count() === 0, `${me}: HTML from a message was parsed`);
    await page.locator("#messages .content", { hasText: XSS }).scrollIntoViewIfNeeded();
    await page.getByText(XSS, { exact: true }).waitFor({ state: "visible", timeout: WAIT });
    // The long message wraps inside the list instead of widening it.
    const overflow = await page.evaluate(() => {
      const s = document.getElementById("scroller");
      return s.scrollWidth - s.clientWidth;
    });
    assert(overflow <= 1, `${me}: the message list overflows horizontally by ${overflow}px`);
  }
  log("HTML-looking messages render as text, no <img>, long text wraps");

  // --- several rooms, unread counts -------------------------------------------------------
  await joinRoom(a, SIDE);
  await switchRoom(a, ROOM);
  await joinRoom(b, SIDE);
  await sendAndWaitAck(b, "psst, alice — over here");
  await a.locator(`#open-rooms li[data-room="${SIDE}"] .badge[data-unread="1"]`).waitFor({ timeout: WAIT });
  await switchRoom(b, ROOM);
  log("unread badge shows 1 for", SIDE, "on alice's page");

  await b.locator("#scroller").evaluate((s) => { s.scrollTop = s.scrollHeight; });
  await shot(a, "page-a-before-restart.png");
  await shot(b, "page-b-before-restart.png");

  // --- crash and restart --------------------------------------------------------------
  log("killing parlor with SIGKILL");
  const dead = new Promise((r) => server.once("exit", r));
  server.kill("SIGKILL");
  await dead;
  await b.locator('#conn[data-state="reconnecting"]').waitFor({ timeout: WAIT });
  await b.locator("#banner").waitFor({ state: "visible", timeout: WAIT });
  const bannerText = await b.locator("#banner-text").textContent();
  assert(/reconnecting/i.test(bannerText), `bob's banner says ${JSON.stringify(bannerText)}`);
  log("bob's banner:", JSON.stringify(bannerText));
  // Alice writes while the server is down: it waits as pending, then is retried.
  await a.locator("#input").fill("written while the server was down");
  await a.locator("#input").press("Enter");
  await a.locator("#pending li.pending").waitFor({ timeout: WAIT });
  await shot(b, "page-b-reconnecting.png");
  await shot(a, "page-a-reconnecting.png");
  await sleep(1000);

  await startServer(port);
  log("parlor restarted on the same data dir and port");
  for (const page of [a, b]) {
    await page.waitForFunction(() => window.parlor.state === "connected", null, { timeout: 30_000 });
    await page.locator(`#room-view[data-room="${ROOM}"][data-joined="true"]`).waitFor({ timeout: WAIT });
  }
  assert(await b.locator("#banner").isHidden(), "bob's banner is gone after the reconnect");
  await a.waitForFunction(() => document.querySelectorAll("#pending li").length === 0, null, { timeout: WAIT });
  log("both reconnected; alice's queued message was acked");

  for (let i = 1; i <= 3; i++) await sendAndWaitAck(a, `back again, message ${i} after the restart`);
  expected = (await api(base, `/api/rooms/${ROOM}/messages?limit=1000`)).messages;
  assert(expected.length === script.length + 4, `server has ${expected.length} messages after the restart`);
  assert(expected.every((m, i) => m.sequence === i + 1), "server sequences are 1..n");
  for (const [page, me] of [[b, "bob"], [a, "alice"]]) {
    await waitForSeqCount(page, expected.length, 15_000);
    await sleep(300); // anything extra (a duplicate) would arrive now
    checkInOrder(me, await shownMessages(page), expected);
  }
  log(`after the restart both pages show 1..${expected.length} in order, no duplicates`);

  // --- a lost ack: the retry after a reconnect carries the same id ----------------
  // carol's socket goes through Playwright's WebSocket routing, which drops
  // the server's acks while `dropAcks` is set and can cut the connection.
  let dropAcks = false;
  let droppedAcks = 0;
  const routes = [];
  const c = await newPage("carol", { viewport: { width: 900, height: 640 } });
  await c.routeWebSocket((u) => u.pathname === "/ws", (ws) => {
    const server = ws.connectToServer();
    server.onMessage((m) => {
      if (dropAcks && typeof m === "string" && JSON.parse(m).type === "ack") { droppedAcks++; return; }
      ws.send(m);
    });
    routes.push(ws);
  });
  await c.goto(base + "/", { timeout: WAIT });
  await c.locator("#name-dialog[open] #name-input").fill("carol");
  await c.locator("#name-input").press("Enter");
  await c.waitForFunction(() => window.parlor && window.parlor.state === "connected", null, { timeout: WAIT });
  await joinRoom(c, ROOM);
  dropAcks = true;
  const lost = "carol: my ack gets lost, but I am stored once";
  await c.locator("#input").fill(lost);
  await c.locator("#input").press("Enter");
  await b.locator("#messages li[data-seq] .content", { hasText: lost }).waitFor({ timeout: WAIT });
  await c.locator("#messages li[data-seq] .content", { hasText: lost }).waitFor({ timeout: WAIT });
  const deadline = Date.now() + WAIT;
  while (droppedAcks === 0 && Date.now() < deadline) await sleep(50);
  assert(droppedAcks === 1, `dropped ${droppedAcks} acks`);
  assert(await c.evaluate((r) => window.parlor.room(r).pending, ROOM) === 1, "carol's message is still pending without its ack");
  dropAcks = false;
  routes.at(-1).close({ code: 4000, reason: "test: connection lost" });
  await c.waitForFunction((r) => window.parlor.state === "connected" && window.parlor.room(r).joined &&
    window.parlor.room(r).pending === 0, ROOM, { timeout: 20_000 });
  assert(routes.length >= 2, "carol reconnected");
  expected = (await api(base, `/api/rooms/${ROOM}/messages?limit=1000`)).messages;
  assert(expected.filter((m) => m.content === lost).length === 1, "the retried message is stored once");
  for (const [page, me] of [[b, "bob"], [c, "carol"], [a, "alice"]]) {
    await waitForSeqCount(page, expected.length);
    await sleep(200);
    checkInOrder(me, await shownMessages(page), expected);
  }
  await shot(c, "page-c.png");
  await c.context().close();
  pages.splice(pages.findIndex(([n]) => n === "carol"), 1);
  log("a retry after a lost ack showed no duplicate on any page");

  // --- scroll-back -----------------------------------------------------------------------
  const TOTAL = 250;
  for (let i = 1; i <= TOTAL; i++) {
    await api(base, `/api/rooms/${HIST}/messages`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user: "history-bot", content: `old message ${i}` }),
    });
  }
  await joinRoom(a, HIST);
  await a.waitForFunction(() => document.querySelectorAll("#messages li[data-seq]").length === 50, null, { timeout: WAIT });
  let shown = await shownMessages(a);
  assert(shown[0].seq === TOTAL - 49 && shown[49].seq === TOTAL, `join shows the newest 50, got ${shown[0].seq}..${shown.at(-1).seq}`);
  for (let page = 0; page < 10 && shown.length < TOTAL; page++) {
    const before = shown.length;
    await a.locator("#scroller").evaluate((s) => { s.scrollTop = 0; });
    await a.waitForFunction((n) => document.querySelectorAll("#messages li[data-seq]").length > n, before, { timeout: WAIT });
    shown = await shownMessages(a);
  }
  checkInOrder("alice scroll-back", shown, (await api(base, `/api/rooms/${HIST}/messages?limit=1000`)).messages);
  await a.locator('#older[data-state="start"]').waitFor({ timeout: WAIT });
  log(`scroll-back paged in 1..${TOTAL}`);
  await switchRoom(a, ROOM);

  // --- status and typing ------------------------------------------------------------------
  await switchRoom(b, ROOM);
  await a.locator("#status-select").selectOption("busy");
  await b.locator('#presence-list li[data-user="alice"][data-status="busy"]').waitFor({ state: "attached", timeout: WAIT });
  await a.locator('#presence-list li[data-user="alice"][data-status="busy"]').waitFor({ state: "attached", timeout: WAIT });
  await a.locator("#input").fill("alice is writing somethi");
  await b.locator("#typing", { hasText: "alice is typing…" }).waitFor({ timeout: WAIT });
  await b.locator("#presence-toggle").click();
  await shot(b, "page-b-status-typing.png");
  await b.locator("#presence-toggle").click();
  await a.locator("#input").fill("");
  await b.locator("#typing", { hasText: "alice is typing" }).waitFor({ state: "detached", timeout: WAIT }).catch(() => {});
  await b.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: WAIT });
  log("bob sees alice busy and typing; the typing note clears");

  // --- a direct message, and a third page that cannot open it ----------------------------
  const DM = "dm:alice:bob";
  await a.locator('#presence-list li[data-user="bob"] .dm-btn').click();
  await a.locator(`#room-view[data-room="${DM}"][data-joined="true"]`).waitFor({ timeout: WAIT });
  assert(await a.locator(`#dm-rooms li[data-room="${DM}"]`).count() === 1, "the DM is listed under direct messages");
  assert(await a.locator(`#open-rooms li[data-room="${DM}"]`).count() === 0, "the DM is not listed with the rooms");
  assert((await a.locator("#room-title").textContent()) === "@bob", "the DM is titled by the other user");
  await sendAndWaitAck(a, "hi bob, this is just between us");
  await joinRoom(b, DM);
  await b.locator("#messages li[data-seq] .content", { hasText: "just between us" }).waitFor({ timeout: WAIT });
  await sendAndWaitAck(b, "got it, alice");
  await a.locator("#messages li[data-seq] .content", { hasText: "got it, alice" }).waitFor({ timeout: WAIT });
  await shot(a, "page-a-dm.png");
  const d = await newPage("dave", { viewport: { width: 900, height: 640 } });
  await d.goto(base + "/", { timeout: WAIT });
  await d.locator("#name-dialog[open] #name-input").fill("dave");
  await d.locator("#name-input").press("Enter");
  await d.waitForFunction(() => window.parlor && window.parlor.state === "connected", null, { timeout: WAIT });
  await d.locator("#join-input").fill(DM);
  await d.locator("#join-input").press("Enter");
  await d.locator(`#room-view[data-room="${DM}"][data-refused="true"]`).waitFor({ timeout: WAIT });
  assert(await d.locator("#messages li[data-seq]").count() === 0, "dave sees none of the DM");
  const dmApi = await fetch(`${base}/api/rooms/${DM}/messages?user=dave`);
  assert(dmApi.status === 403, `the API refuses dave the DM (${dmApi.status})`);
  await shot(d, "page-d-dm-refused.png");
  await d.context().close();
  pages.splice(pages.findIndex(([n]) => n === "dave"), 1);
  log("alice and bob chat in", DM, "; dave is refused it");

  // --- unread counts from read markers: two tabs of one user --------------------------------
  await switchRoom(a, ROOM);
  const a2 = await a.context().newPage();
  a2.setDefaultTimeout(WAIT);
  pages.push(["alice-tab2", a2]);
  a2.on("pageerror", (e) => problems.push(`alice-tab2: page error: ${e.message}`));
  await a2.goto(base + "/", { timeout: WAIT });
  await a2.waitForFunction((r) => window.parlor && window.parlor.state === "connected" &&
    window.parlor.room(r) && window.parlor.room(r).joined, SIDE, { timeout: WAIT });
  await switchRoom(a2, ROOM);
  await switchRoom(b, SIDE);
  await sendAndWaitAck(b, "one message, two tabs, one count");
  const unreadOn = async (page) => page.evaluate((r) => window.parlor.room(r).unread, SIDE);
  await a2.waitForFunction((r) => window.parlor.room(r).last >= 2, SIDE, { timeout: WAIT });
  await a.waitForFunction((r) => window.parlor.room(r).last >= 2, SIDE, { timeout: WAIT });
  const [u1, u2] = [await unreadOn(a), await unreadOn(a2)];
  assert(u1 >= 1 && u1 === u2, `both tabs show the same unread count (${u1}, ${u2})`);
  await a2.locator(`#open-rooms li[data-room="${SIDE}"] .badge[data-unread="${u1}"]`).waitFor({ timeout: WAIT });
  await shot(a2, "page-a2-unread.png");
  await switchRoom(a, SIDE); // tab 1 reads it: tab 2's badge goes
  await a2.locator(`#open-rooms li[data-room="${SIDE}"] .badge`).waitFor({ state: "detached", timeout: WAIT });
  await a2.reload({ timeout: WAIT });
  await a2.waitForFunction((r) => window.parlor && window.parlor.room(r) && window.parlor.room(r).joined, SIDE, { timeout: WAIT });
  assert(await unreadOn(a2) === 0, "after a reload the read marker still holds");
  assert(await a2.locator(`#open-rooms li[data-room="${SIDE}"] .badge`).count() === 0, "no badge after the reload");
  await shot(a2, "page-a2-read.png");
  await a2.close();
  pages.splice(pages.findIndex(([n]) => n === "alice-tab2"), 1);
  log(`unread count ${u1} matched across two tabs; reading in one cleared both, also after a reload`);

  // --- WebSocket blocked: SSE + POST --------------------------------------------------------
  const e = await newPage("erin", { viewport: { width: 900, height: 640 } });
  await e.routeWebSocket(/\/ws/, (ws) => ws.close({ code: 1011, reason: "test: WebSocket blocked" }));
  await e.goto(base + "/", { timeout: WAIT });
  await e.locator("#name-dialog[open] #name-input").fill("erin");
  await e.locator("#name-input").press("Enter");
  await e.waitForFunction(() => window.parlor && window.parlor.transport === "sse" && window.parlor.state === "connected", null, { timeout: 20_000 });
  await e.locator('#conn[data-transport="sse"]').waitFor({ timeout: WAIT });
  assert(/SSE/.test(await e.locator("#conn-text").textContent()), "the page says it chats over SSE");
  await joinRoom(e, ROOM);
  await switchRoom(b, ROOM);
  await sendAndWaitAck(e, "hello from erin, over SSE + POST");
  await b.locator("#messages li[data-seq] .content", { hasText: "over SSE + POST" }).waitFor({ timeout: WAIT });
  await sendAndWaitAck(b, "bob to erin over WebSocket");
  await e.locator("#messages li[data-seq] .content", { hasText: "bob to erin over WebSocket" }).waitFor({ timeout: WAIT });
  expected = (await api(base, `/api/rooms/${ROOM}/messages?limit=1000`)).messages;
  await waitForSeqCount(e, expected.length);
  checkInOrder("erin (SSE)", await shownMessages(e), expected);
  await shot(e, "page-e-sse-fallback.png");
  log("erin chats over SSE + POST with the WebSocket blocked");

  // The room directory lists the stored rooms (from the paged room list).
  await a.locator("#refresh-rooms").evaluate((btn) => btn.click());
  await a.locator(`#all-rooms li[data-room="${ROOM}"]`).waitFor({ state: "attached", timeout: WAIT });
  log("the room directory lists the rooms");

  // --- final screenshots ---------------------------------------------------------------------
  for (const page of [a, b]) await page.locator("#scroller").evaluate((s) => { s.scrollTop = s.scrollHeight; });
  await shot(a, "page-a.png");
  await shot(b, "page-b.png");
  // Bob's phone with the presence list open.
  await b.locator("#presence-toggle").click();
  await b.locator("#presence").waitFor({ state: "visible" });
  await shot(b, "page-b-presence.png");
  await b.locator("#menu-toggle").click();
  await b.locator("#sidebar").evaluate(() => new Promise((r) => setTimeout(r, 300)));
  await shot(b, "page-b-menu.png");

  assert(problems.length === 0, problems.join("; "));
}

let code = 0;
try {
  await main();
  log("PASS");
} catch (e) {
  code = 1;
  console.error("FAIL:", e && e.stack ? e.stack : e);
  if (problems.length) console.error("also:", problems.join("; "));
  for (const [name, page] of pages) {
    await page.screenshot({ path: path.join(OUT, `failure-${name}.png`), timeout: 5000 }).catch(() => {});
  }
  console.error("server log: target/browser/server.log; console: target/browser/console.log; failure-*.png");
} finally {
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
  killServer();
}
process.exit(code);
