// The callstream ops page: live calls with their transcripts, recent calls.
// No build step, no framework. State comes from GET /ops/calls, then from the
// live feed (GET /ops/events, server-sent events); the page's cookie
// authenticates both. Feed text is untrusted: it only ever goes in textContent.
"use strict";

const EVENT_TYPES = [
  "call.started", "transcript.partial", "transcript.final", "bargein",
  "dialog.transition", "action", "latency", "call.ended", "archive.stored",
];
const HAND_ON = ["transfer", "conference", "voicemail", "hangup"];
const MAX_LINES = 200;
const MAX_RECENT = 100;

const live = new Map();    // call_sid -> call (as /ops/calls gives it)
let recent = [];           // most recent first

function blankCall(sid, t) {
  return {
    call_sid: sid, live: true, started_t: t, ended_t: null, last_t: t, from: "", to: "",
    flow: "", state: null, path: [], outcome: null, end_reason: null, bargein_ms: [],
    response_ms: [], archive: null, partial: "", transcript: [],
  };
}

function liveCall(event) {
  let call = live.get(event.call_sid);
  if (!call) {
    const i = recent.findIndex((c) => c.call_sid === event.call_sid);
    call = i >= 0 ? recent.splice(i, 1)[0] : blankCall(event.call_sid, event.t);
    call.live = true; call.ended_t = null; call.end_reason = null;
    call.transcript = call.transcript || []; call.partial = "";
    live.set(event.call_sid, call);
  }
  call.last_t = Math.max(call.last_t || 0, event.t);
  return call;
}

function apply(type, event) {
  if (type === "archive.stored") {
    const call = live.get(event.call_sid) || recent.find((c) => c.call_sid === event.call_sid);
    if (call) call.archive = event.location;
    return;
  }
  const call = liveCall(event);
  switch (type) {
    case "call.started":
      call.started_t = call.started_t || event.t;
      call.from = event.from; call.to = event.to; call.flow = event.flow;
      break;
    case "transcript.partial":
      call.partial = event.text;
      break;
    case "transcript.final":
      if (event.speaker === "caller") call.partial = "";
      if (event.text) {
        call.transcript.push({t: event.t, speaker: event.speaker, text: event.text, interrupted: event.interrupted});
        if (call.transcript.length > MAX_LINES) call.transcript.shift();
      }
      break;
    case "bargein":
      call.bargein_ms.push(event.latency_ms);
      break;
    case "dialog.transition":
      if (event.from !== event.to) call.path.push(event.to);  // a resume re-enters its state
      call.state = event.to;
      break;
    case "action":
      if (HAND_ON.includes(event.action)) call.outcome = event.action;
      break;
    case "latency":
      if (event.name === "response") call.response_ms.push(Math.round(event.ms * 10) / 10);
      break;
    case "call.ended":
      call.live = false; call.ended_t = event.t; call.end_reason = event.reason; call.partial = "";
      live.delete(call.call_sid);
      recent.unshift(call);
      recent = recent.slice(0, MAX_RECENT);
      break;
  }
}

// --- rendering ------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function stats(values) {
  if (!values.length) return "–";
  const last = values[values.length - 1];
  return `${last} ms (max ${Math.max(...values)}, n=${values.length})`;
}

function latencies(call) {
  return `barge-in: ${stats(call.bargein_ms)} · response: ${stats(call.response_ms)}`;
}

function clock(t) {
  return t ? new Date(t).toLocaleTimeString() : "";
}

function renderLiveCall(call) {
  const id = `call-${call.call_sid}`;
  let card = document.getElementById(id);
  if (!card) {
    card = el("article", {class: "call", id, "data-call-sid": call.call_sid},
      el("h3", {}, call.call_sid),
      el("p", {class: "meta"}), el("p", {class: "latency"}), el("div", {class: "transcript"}));
    document.getElementById("live").append(card);
  }
  card.querySelector(".meta").textContent =
    `${call.from || "?"} → ${call.to || "?"} · since ${clock(call.started_t)} · ` +
    `state ${call.state || "–"} · ${call.path.join(" → ")}`;
  card.querySelector(".latency").textContent = latencies(call);
  const box = card.querySelector(".transcript");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 24;
  box.replaceChildren(...call.transcript.map((line) =>
    el("p", {class: `line ${line.speaker}${line.interrupted ? " interrupted" : ""}`},
      el("span", {class: "who"}, line.speaker), el("span", {class: "text"}, line.text))));
  if (call.partial) {
    box.append(el("p", {class: "line partial caller"}, el("span", {class: "who"}, "caller"),
      el("span", {class: "text"}, `${call.partial}…`)));
  }
  if (atBottom) box.scrollTop = box.scrollHeight;  // follow the conversation unless scrolled up
}

function renderRecentRow(call) {
  const link = el("a", {href: `/ops/calls/${encodeURIComponent(call.call_sid)}`}, call.call_sid);
  const archive = call.archive ? el("a", {href: `/ops/calls/${encodeURIComponent(call.call_sid)}`}, "stored") : "–";
  return el("tr", {"data-call-sid": call.call_sid},
    el("td", {class: "sid"}, link), el("td", {}, clock(call.ended_t)),
    el("td", {}, call.end_reason || ""), el("td", {}, call.path.join(" → ")),
    el("td", {}, latencies(call)), el("td", {class: "archive"}, archive));
}

function render() {
  for (const card of document.querySelectorAll("#live .call")) {
    if (!live.has(card.dataset.callSid)) card.remove();
  }
  for (const call of live.values()) renderLiveCall(call);
  document.getElementById("live-count").textContent = String(live.size);
  document.getElementById("no-live").hidden = live.size > 0;
  document.querySelector("#recent tbody").replaceChildren(...recent.map(renderRecentRow));
}

let pending = false;
function scheduleRender() {  // at most one render per frame, however busy the feed
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

// --- data ---------------------------------------------------------------------------

async function loadCalls() {
  const response = await fetch("/ops/calls", {credentials: "same-origin", cache: "no-store"});
  if (response.status === 401) { location.reload(); return; }  // the cookie expired: log in again
  const body = await response.json();
  live.clear();
  for (const call of body.live) live.set(call.call_sid, call);
  recent = body.recent.map((c) => Object.assign({transcript: [], partial: ""}, c));
  scheduleRender();
}

function setStatus(state, text) {
  document.body.dataset.feed = state;
  document.getElementById("feed-status").textContent = text;
}

function follow() {
  const source = new EventSource("/ops/events");
  let opened = false;
  source.onopen = () => {
    // (re)connected: the snapshot covers whatever the feed missed meanwhile
    loadCalls().then(() => setStatus("connected", "live"), () => setStatus("reconnecting", "reconnecting…"));
    opened = true;
  };
  source.onerror = () => setStatus(opened ? "reconnecting" : "connecting", "reconnecting…");
  for (const type of EVENT_TYPES) {
    source.addEventListener(type, (message) => {
      apply(type, JSON.parse(message.data));
      scheduleRender();
    });
  }
}

follow();
