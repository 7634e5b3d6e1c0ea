// Drives ferrolm's chat page in headless Chromium over the DevTools protocol, for
// crates/serve/tests/browser.rs. No npm packages: Chromium is started with
// --remote-debugging-pipe and spoken to as NUL-terminated JSON on its fds 3 (commands in)
// and 4 (replies and events out).
//
//   node drive.mjs '<config JSON>'
//
// config: { url, chromium, out_dir, prompt, compare_prompt, pick ("a" | "b"), seed,
//           max_tokens, refused_max_tokens (more than the context holds), temperature, top_p,
//           timeout_ms (each single wait), total_ms (the whole drive) }
// stdout: one JSON report (see `report` below); exit status 0. On any failure: a JSON
// object {"error": "..."} on stdout, exit status 1. Chromium is killed on every way out.
import { spawn } from "node:child_process";
import { writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";

const cfg = JSON.parse(process.argv[2]);
const t0 = Date.now();
const log = (msg) => process.stderr.write(`[drive ${((Date.now() - t0) / 1000).toFixed(2)}s] ${msg}\n`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- Chromium and the pipe -------------------------------------------------------------
const profile = join(cfg.out_dir, "chromium-profile");
mkdirSync(profile, { recursive: true });
const args = [
  "--headless", "--no-sandbox", "--remote-debugging-pipe", `--user-data-dir=${profile}`,
  "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
  "--disable-extensions", "--disable-background-networking", "--disable-component-update",
  "--disable-sync", "--disable-breakpad", "--mute-audio", "--hide-scrollbars",
  "--window-size=1280,900", "about:blank",
];
const chrome = spawn(cfg.chromium, args, { stdio: ["ignore", "pipe", "pipe", "pipe", "pipe"] });
let chromeExited = null;
let chromeLog = "";
const keepLog = (d) => { chromeLog = (chromeLog + d.toString()).slice(-4000); };
chrome.stdout.on("data", keepLog);
chrome.stderr.on("data", keepLog);
chrome.on("exit", (code, sig) => { chromeExited = `code ${code} signal ${sig}`; });
chrome.on("error", (e) => fail(`cannot start ${cfg.chromium}: ${e.message}`));
const killChrome = () => { if (chromeExited === null) { try { chrome.kill("SIGKILL"); } catch (_) { /* gone */ } } };
process.on("exit", killChrome);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(sig, () => { killChrome(); process.exit(1); });

const toChrome = chrome.stdio[3];
const fromChrome = chrome.stdio[4];
let nextId = 1;
const pending = new Map(); // id -> {resolve, reject, method}
const listeners = []; // (msg) => void, for events
let inbuf = Buffer.alloc(0);
fromChrome.on("data", (chunk) => {
  inbuf = Buffer.concat([inbuf, chunk]);
  let end;
  while ((end = inbuf.indexOf(0)) >= 0) {
    const msg = JSON.parse(inbuf.subarray(0, end).toString("utf8"));
    inbuf = inbuf.subarray(end + 1);
    if (msg.id !== undefined && pending.has(msg.id)) {
      const p = pending.get(msg.id);
      pending.delete(msg.id);
      if (msg.error) p.reject(new Error(`${p.method}: ${JSON.stringify(msg.error)}`));
      else p.resolve(msg.result);
    } else if (msg.method) {
      for (const l of listeners) l(msg);
    }
  }
});
fromChrome.on("close", () => {
  for (const p of pending.values()) p.reject(new Error(`${p.method}: the DevTools pipe closed (chromium ${chromeExited || "running"})`));
  pending.clear();
});

function send(method, params = {}, sessionId, timeoutMs = cfg.timeout_ms) {
  const id = nextId++;
  const msg = { id, method, params };
  if (sessionId) msg.sessionId = sessionId;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { pending.delete(id); reject(new Error(`timed out after ${timeoutMs} ms waiting for the reply to ${method}`)); }, timeoutMs);
    pending.set(id, { method, resolve: (r) => { clearTimeout(timer); resolve(r); }, reject: (e) => { clearTimeout(timer); reject(e); } });
    toChrome.write(JSON.stringify(msg) + "\0");
  });
}

function waitEvent(what, pred, timeoutMs = cfg.timeout_ms) {
  return new Promise((resolve, reject) => {
    const l = (msg) => { if (pred(msg)) { done(); resolve(msg); } };
    const timer = setTimeout(() => { done(); reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)); }, timeoutMs);
    const done = () => { clearTimeout(timer); const i = listeners.indexOf(l); if (i >= 0) listeners.splice(i, 1); };
    listeners.push(l);
  });
}

// ---- the page ----------------------------------------------------------------------------
let session = null;
let phase = "start"; // each console message is tagged with the step it came in
const consoleErrors = [];
const consoleOther = [];
listeners.push((msg) => {
  if (msg.sessionId !== session) return;
  const p = msg.params;
  if (msg.method === "Runtime.consoleAPICalled") {
    const text = p.args.map((a) => (a.value !== undefined ? String(a.value) : a.description || a.type)).join(" ");
    (p.type === "error" || p.type === "assert" ? consoleErrors : consoleOther).push(`${phase}: console.${p.type}: ${text}`);
  } else if (msg.method === "Runtime.exceptionThrown") {
    const d = p.exceptionDetails;
    consoleErrors.push(`${phase}: uncaught: ${(d.exception && d.exception.description) || d.text} at ${d.url || "?"}:${d.lineNumber}`);
  } else if (msg.method === "Log.entryAdded") {
    const e = p.entry;
    (e.level === "error" ? consoleErrors : consoleOther).push(`${phase}: ${e.source} ${e.level}: ${e.text}${e.url ? " (" + e.url + ")" : ""}`);
  }
});

async function evaluate(expression) {
  const r = await send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true }, session);
  if (r.exceptionDetails) throw new Error(`page script failed: ${expression.slice(0, 80)}…: ${(r.exceptionDetails.exception && r.exceptionDetails.exception.description) || r.exceptionDetails.text}`);
  return r.result.value;
}

// The page's status line when it reports an error (not the thanks for a judgement).
const PAGE_ERROR = `(() => { const t = document.getElementById("status").textContent; return t && !t.startsWith("thank you") ? t : null; })()`;
let errorsFail = false; // once on, a page error ends every wait at once

// Poll `expression` until `ok(value)`; the error names what was awaited and the last value.
async function waitFor(what, expression, ok = (v) => !!v, timeoutMs = cfg.timeout_ms) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    last = await evaluate(expression);
    if (ok(last)) return last;
    const pageError = errorsFail ? await evaluate(PAGE_ERROR) : null;
    if (pageError) throw new Error(`the page reported an error while waiting for ${what}: ${JSON.stringify(pageError)}`);
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last seen: ${JSON.stringify(last)}; status line: ${JSON.stringify(await evaluate("document.getElementById('status').textContent"))})`);
    await sleep(20);
  }
}

// A real mouse click at the middle of the element (which must exist and be enabled).
async function click(selector) {
  const box = await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(selector)});
    if (!e) return null; e.scrollIntoView({ block: "center" }); const r = e.getBoundingClientRect();
    return { x: r.left + r.width / 2, y: r.top + r.height / 2, disabled: !!e.disabled, w: r.width, h: r.height }; })()`);
  if (!box) throw new Error(`no element ${selector} to click`);
  if (box.disabled) throw new Error(`${selector} is disabled`);
  if (box.w === 0 || box.h === 0) throw new Error(`${selector} is not visible`);
  const hit = await evaluate(`(() => { const e = document.elementFromPoint(${box.x}, ${box.y}); const t = document.querySelector(${JSON.stringify(selector)}); return e === t || t.contains(e); })()`);
  if (!hit) throw new Error(`${selector} is covered by another element`);
  for (const type of ["mouseMoved", "mousePressed", "mouseReleased"]) {
    await send("Input.dispatchMouseEvent", { type, x: box.x, y: box.y, button: "left", clickCount: 1 }, session);
  }
}

// Click into a field, select what is there, and type `text` over it.
async function typeInto(selector, text) {
  await click(selector);
  await evaluate(`document.querySelector(${JSON.stringify(selector)}).select()`);
  await send("Input.insertText", { text }, session);
  const v = await evaluate(`document.querySelector(${JSON.stringify(selector)}).value`);
  if (v !== text) throw new Error(`typed ${JSON.stringify(text)} into ${selector} but it holds ${JSON.stringify(v)}`);
}

// The text of an answer bubble without its rating buttons.
const bubbleText = (expr) => `(() => { const d = ${expr}; return d ? Array.from(d.childNodes).filter((n) => n.nodeType === 3).map((n) => n.nodeValue).join("") : null; })()`;
const LAST_ANSWER = `(() => { const m = document.querySelectorAll("#log > .msg.assistant"); return m[m.length - 1]; })()`;

async function run() {
  log(`chromium ${cfg.chromium}`);
  const version = await send("Browser.getVersion");
  log(`${version.product}`);
  const { targetId } = await send("Target.createTarget", { url: "about:blank" });
  ({ sessionId: session } = await send("Target.attachToTarget", { targetId, flatten: true }));
  await send("Page.enable", {}, session);
  await send("Runtime.enable", {}, session);
  await send("Log.enable", {}, session);

  // 1. load
  phase = "load";
  const loaded = waitEvent("the page's load event", (m) => m.sessionId === session && m.method === "Page.loadEventFired");
  const nav = await send("Page.navigate", { url: cfg.url }, session);
  if (nav.errorText) throw new Error(`navigating to ${cfg.url}: ${nav.errorText}`);
  await loaded;
  const title = await evaluate("document.title");
  const modelName = await waitFor("the model name from /v1/models", "document.getElementById('model-name').textContent", (v) => v.startsWith("model: "));
  const countLine0 = await waitFor("the stored-judgement count", "document.getElementById('feedback-count').textContent", (v) => v.length > 0);
  const css = await evaluate("getComputedStyle(document.body).display");
  log(`loaded: ${title}, ${modelName}, ${countLine0}`);

  // 2. a request the server refuses (an answer longer than the context): the page shows
  //    the error, and the failed turn stays out of the conversation
  phase = "refused";
  await typeInto("#max_tokens", String(cfg.refused_max_tokens));
  await typeInto("#input", cfg.prompt);
  await click("#send");
  const refused = await waitFor("the page to show the server's error for an over-long max_tokens", "document.getElementById('status').textContent", (v) => v.length > 0);
  await waitFor("the page to be idle after the refused request", "document.getElementById('send').disabled", (v) => v === false);
  const refusedBubbles = await evaluate(`document.querySelectorAll("#log .msg.assistant").length`);
  log(`refused: ${refused}`);

  // 3. settings, typed into the sidebar
  phase = "chat";
  errorsFail = true;
  await typeInto("#seed", String(cfg.seed));
  await typeInto("#max_tokens", String(cfg.max_tokens));
  await typeInto("#temperature", String(cfg.temperature));
  await typeInto("#top_p", String(cfg.top_p));

  // 4. send a message and watch the answer grow
  await typeInto("#input", cfg.prompt);
  // Every change of the answer's text, as the page makes it (a MutationObserver in the page).
  await evaluate(`(() => { const t0 = performance.now(); window.__growth = [];
    window.__observer = new MutationObserver(() => { const n = (${bubbleText(LAST_ANSWER)} || "").length; const g = window.__growth;
      if (!g.length || g[g.length - 1][1] !== n) g.push([Math.round(performance.now() - t0), n]); });
    window.__observer.observe(document.getElementById("log"), { childList: true, subtree: true, characterData: true }); })()`);
  const tSend = Date.now();
  await click("#send");
  const samples = []; // [ms since send, characters shown]
  const end = Date.now() + cfg.timeout_ms;
  for (;;) {
    const s = await evaluate(`(() => { const d = ${LAST_ANSWER}; return { len: ${bubbleText(LAST_ANSWER)}, busy: document.getElementById("stop").disabled === false, rated: !!(d && d.querySelector(".rate")) }; })()`);
    const len = s.len === null ? -1 : s.len.length;
    samples.push([Date.now() - tSend, len]);
    if (s.rated && !s.busy) break;
    const pageError = await evaluate(PAGE_ERROR);
    if (pageError) throw new Error(`the page reported an error while streaming the answer: ${JSON.stringify(pageError)}`);
    if (Date.now() > end) throw new Error(`timed out after ${cfg.timeout_ms} ms waiting for the answer to finish streaming (lengths seen: ${JSON.stringify(samples.slice(-10))}; status: ${JSON.stringify(await evaluate("document.getElementById('status').textContent"))})`);
    await sleep(5);
  }
  const answer = await evaluate(bubbleText(LAST_ANSWER));
  const updates = await evaluate("window.__observer.disconnect(), window.__growth");
  log(`answer: ${answer.length} characters after ${Date.now() - tSend} ms, ${samples.length} observations`);
  const userBubble = await evaluate(`(() => { const m = document.querySelectorAll("#log > .msg.user"); return m.length ? m[m.length - 1].textContent : null; })()`);

  // 5. thumbs up
  phase = "rate";
  await click(`#log > .msg.assistant:last-of-type .rate button[data-choice="up"]`);
  const rated = await waitFor("the thumbs-up to be stored (its button marked chosen)", `(() => { const b = document.querySelector('#log > .msg.assistant:last-of-type .rate button[data-choice="up"]'); return b && b.classList.contains("chosen") ? document.getElementById("status").textContent : null; })()`);
  const countLine1 = await waitFor("the count to show 1 judgement", "document.getElementById('feedback-count').textContent", (v) => v.startsWith("1 "));
  log(`rated: ${rated}; ${countLine1}`);
  const shotRated = await send("Page.captureScreenshot", { format: "png" }, session);
  writeFileSync(join(cfg.out_dir, "rated.png"), Buffer.from(shotRated.data, "base64"));

  // 6. compare: two answers side by side, pick one
  phase = "compare";
  await typeInto("#input", cfg.compare_prompt);
  await click("#compare");
  const pair = await waitFor("two answers side by side with their pick buttons", `(() => { const p = document.querySelectorAll("#log > .pair"); const last = p[p.length - 1];
      if (!last) return null; const sides = last.querySelectorAll(".side"); const picks = last.querySelectorAll(".side > .pick");
      if (sides.length !== 2 || picks.length !== 2) return null;
      return { a: sides[0].querySelector(".msg").textContent, b: sides[1].querySelector(".msg").textContent, labels: Array.from(picks).map((x) => x.textContent) }; })()`);
  log(`compare: ${pair.a.length} and ${pair.b.length} characters`);
  const side = cfg.pick === "a" ? 1 : 2;
  await click(`#log > .pair:last-of-type > .side:nth-child(${side}) > .pick`);
  const won = await waitFor("the pick to be stored (its side marked won)", `(() => { const s = document.querySelectorAll("#log > .pair:last-of-type > .side"); return Array.from(s).map((x) => x.classList.contains("won")); })()`, (v) => v.some((x) => x));
  const picksDisabled = await evaluate(`Array.from(document.querySelectorAll("#log > .pair:last-of-type .pick")).every((b) => b.disabled)`);
  const countLine2 = await waitFor("the count to show 2 judgements", "document.getElementById('feedback-count').textContent", (v) => v.startsWith("2 "));
  log(`picked ${cfg.pick}: ${JSON.stringify(won)}; ${countLine2}`);

  // 7. a picture of the page
  phase = "end";
  const shot = await send("Page.captureScreenshot", { format: "png" }, session);
  const screenshot = join(cfg.out_dir, "page.png");
  writeFileSync(screenshot, Buffer.from(shot.data, "base64"));
  const layout = await evaluate(`(() => { const r = (s) => { const b = document.querySelector(s).getBoundingClientRect(); return [Math.round(b.left), Math.round(b.top), Math.round(b.width), Math.round(b.height)]; };
      return { viewport: [innerWidth, innerHeight], settings: r("#settings"), log: r("#log"), composer: r("#composer"), sides: Array.from(document.querySelectorAll("#log > .pair:last-of-type > .side")).map((s) => { const b = s.getBoundingClientRect(); return [Math.round(b.left), Math.round(b.top), Math.round(b.width), Math.round(b.height)]; }) }; })()`);
  await sleep(50); // let late console messages arrive

  return {
    title, model_name: modelName, refused: { status: refused, assistant_bubbles: refusedBubbles }, body_display: css, user_bubble: userBubble,
    samples, updates, answer, user_bubbles: await evaluate(`Array.from(document.querySelectorAll("#log .msg.user")).map((d) => d.textContent)`), rated_status: rated, counts: [countLine0, countLine1, countLine2],
    compare: { a: pair.a, b: pair.b, labels: pair.labels, won, picks_disabled: picksDisabled },
    console_errors: consoleErrors, console_other: consoleOther, screenshot, layout,
    browser: version.product,
  };
}

async function close() {
  try { await send("Browser.close", {}, undefined, 3000); } catch (_) { /* killed below */ }
  for (let i = 0; i < 100 && chromeExited === null; i++) await sleep(20);
  killChrome();
}

function fail(message) {
  process.stdout.write(JSON.stringify({ error: message, console_errors: consoleErrors, chromium_output: chromeLog }) + "\n");
  killChrome();
  process.exit(1);
}

const overall = setTimeout(() => fail(`the whole drive took over ${cfg.total_ms} ms`), cfg.total_ms);
try {
  const report = await run();
  await close();
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(report) + "\n");
  process.exit(0);
} catch (e) {
  fail(e.stack || String(e));
}
