// The ferrolm chat page: streams answers from /v1/chat/completions, keeps the
// conversation, and sends judgements (thumbs up/down, compare) to /v1/feedback.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { model: null, history: [], controller: null, lastPrompt: null };

for (const id of ["system", "temperature", "top_p", "max_tokens", "seed", "api_key"]) {
  const saved = localStorage.getItem("ferrolm." + id);
  if (saved !== null) $(id).value = saved;
  $(id).addEventListener("change", () => localStorage.setItem("ferrolm." + id, $(id).value));
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function settings() {
  const s = { temperature: parseFloat($("temperature").value), top_p: parseFloat($("top_p").value), max_tokens: parseInt($("max_tokens").value, 10) };
  const seed = $("seed").value.trim();
  if (seed !== "") s.seed = parseInt(seed, 10);
  return s;
}

function status(text) { $("status").textContent = text || ""; }

async function errorText(resp) {
  try { const j = await resp.json(); return `${resp.status}: ${j.error.message}`; } catch (_) { return `HTTP ${resp.status}`; }
}

async function loadModel() {
  const r = await fetch("/v1/models", { headers: headers() });
  if (!r.ok) { status(await errorText(r) + " (set the API key?)"); return; }
  state.model = (await r.json()).data[0].id;
  $("model-name").textContent = "model: " + state.model;
  refreshCount();
}

async function refreshCount() {
  const r = await fetch("/v1/feedback", { headers: headers() });
  if (!r.ok) return;
  const c = (await r.json()).counts;
  const n = Object.values(c).reduce((a, b) => a + b, 0);
  $("feedback-count").textContent = `${n} judgement${n === 1 ? "" : "s"} stored`;
}

function messages(upto) {
  const sys = $("system").value.trim();
  const m = sys ? [{ role: "system", content: sys }] : [];
  return m.concat(upto.map((t) => ({ role: t.role, content: t.content })));
}

function bubble(role, text, parent) {
  const d = document.createElement("div");
  d.className = "msg " + role;
  d.textContent = text;
  (parent || $("log")).appendChild(d);
  $("log").scrollTop = $("log").scrollHeight;
  return d;
}

// Streamed text is shown at most once a frame: setting it and scrolling to it make the
// browser lay the page out, and doing that for every token of a chunk held the page up
// (hundreds of milliseconds for a long answer). flush() shows what is pending now.
function painter(render) {
  let pending = new Map();
  let frame = 0;
  const paint = () => { frame = 0; const p = pending; pending = new Map(); p.forEach((text, i) => render(i, text)); };
  const schedule = (i, text) => { pending.set(i, text); if (!frame) frame = requestAnimationFrame(paint); };
  schedule.flush = () => { if (frame) cancelAnimationFrame(frame); paint(); };
  return schedule;
}

// Stream one request with n choices; onDelta(index, text) as chunks arrive.
async function streamChat(msgs, n, onDelta) {
  state.controller = new AbortController();
  setBusy(true);
  const body = Object.assign({ model: state.model, messages: msgs, stream: true, n }, settings());
  const texts = Array(n).fill("");
  try {
    const r = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!r.ok) { status(await errorText(r)); return null; }
    const reader = r.body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, i);
        buf = buf.slice(i + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const j = JSON.parse(data);
          if (j.error) { status(j.error.message); continue; }
          for (const c of j.choices) {
            const t = c.delta && c.delta.content;
            if (t) { texts[c.index] += t; onDelta(c.index, texts[c.index]); }
          }
        }
      }
    }
  } catch (e) {
    if (e.name !== "AbortError") status(String(e));
  } finally {
    setBusy(false);
    state.controller = null;
  }
  return texts;
}

function setBusy(busy) {
  $("send").disabled = busy; $("compare").disabled = busy; $("stop").disabled = !busy;
  $("regenerate").disabled = busy || !state.lastPrompt;
}

async function judge(j) {
  const r = await fetch("/v1/feedback", { method: "POST", headers: headers(), body: JSON.stringify(j) });
  if (!r.ok) { status(await errorText(r)); return false; }
  status("thank you: judgement stored");
  refreshCount();
  return true;
}

function rateButtons(div, prompt, history, answer) {
  const row = document.createElement("div");
  row.className = "rate";
  // Words, not emoji: a machine without an emoji font showed two empty boxes.
  for (const [label, choice, title] of [["Good", "up", "thumbs up: a good answer"], ["Bad", "down", "thumbs down: a bad answer"]]) {
    const b = document.createElement("button");
    b.type = "button"; b.textContent = label; b.title = title; b.dataset.choice = choice;
    b.onclick = async () => {
      if (await judge({ kind: "rating", history, prompt, answer_a: answer, choice, settings: Object.assign({ system: $("system").value }, settings()) })) {
        row.querySelectorAll("button").forEach((x) => (x.disabled = true));
        b.classList.add("chosen");
      }
    };
    row.appendChild(b);
  }
  div.appendChild(row);
}

async function ask(text) {
  const before = state.history.slice();
  state.lastPrompt = text;
  state.history.push({ role: "user", content: text });
  bubble("user", text);
  const div = bubble("assistant", "");
  const show = painter((_, t) => { div.textContent = t; $("log").scrollTop = $("log").scrollHeight; });
  const texts = await streamChat(messages(state.history), 1, show);
  show.flush();
  const answer = texts ? texts[0] : div.textContent;
  if (!answer) {
    // Failed, or stopped before any text: the prompt stays out of the history (an empty
    // assistant turn there would make every later judgement of this conversation refused).
    state.history.pop();
    div.remove();
    return;
  }
  state.history.push({ role: "assistant", content: answer });
  if (answer.trim()) rateButtons(div, text, messages(before), answer);
}

// Drop the last exchange (the last prompt and its answer) when the history ends with it.
function dropLastExchange() {
  const h = state.history;
  if (h.length >= 2 && h[h.length - 1].role === "assistant" && h[h.length - 2].content === state.lastPrompt) h.splice(-2, 2);
}

async function compare(text) {
  const before = state.history.slice();
  state.lastPrompt = text;
  state.history.push({ role: "user", content: text });
  bubble("user", text);
  const pair = document.createElement("div");
  pair.className = "pair";
  $("log").appendChild(pair);
  const sides = [0, 1].map(() => { const s = document.createElement("div"); s.className = "side"; pair.appendChild(s); return s; });
  const divs = sides.map((s) => bubble("assistant", "", s));
  const show = painter((i, t) => { divs[i].textContent = t; $("log").scrollTop = $("log").scrollHeight; });
  const texts = await streamChat(messages(state.history), 2, show);
  show.flush();
  if (!texts || !texts[0] || !texts[1]) { state.history.pop(); if (!texts) pair.remove(); else status("an answer came back empty: nothing to compare"); return; }
  state.history.push({ role: "assistant", content: texts[0] }); // until the pick replaces it
  sides.forEach((s, i) => {
    const b = document.createElement("button");
    b.type = "button"; b.className = "pick"; b.textContent = i === 0 ? "A is better" : "B is better";
    b.onclick = async () => {
      const choice = i === 0 ? "a" : "b";
      if (await judge({ kind: "compare", history: messages(before), prompt: text, answer_a: texts[0], answer_b: texts[1], choice, settings: Object.assign({ system: $("system").value }, settings()) })) {
        pair.querySelectorAll(".pick").forEach((x) => (x.disabled = true));
        s.classList.add("won");
        state.history[state.history.length - 1].content = texts[i];
      }
    };
    s.appendChild(b);
  });
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  if (!text || !state.model) return;
  $("input").value = "";
  status("");
  ask(text);
});
$("input").addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); } });
$("compare").addEventListener("click", () => {
  const text = $("input").value.trim() || null;
  if (!state.model) return;
  if (text) { $("input").value = ""; compare(text); }
  else if (state.lastPrompt) { dropLastExchange(); compare(state.lastPrompt); }
});
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
$("regenerate").addEventListener("click", () => {
  if (!state.lastPrompt) return;
  dropLastExchange();
  ask(state.lastPrompt);
});
$("new-chat").addEventListener("click", () => { state.history = []; state.lastPrompt = null; $("log").innerHTML = ""; setBusy(false); });
$("api_key").addEventListener("change", loadModel);
loadModel();
