// The live page: polls the read API (same origin, bearer token) every 2 s and renders
// the stages, the newest predictions with thumbnails and the rejections. No build step.
"use strict";

const POLL_MS = 2000;
const NEWEST = 8;
const images = new Map();   // image id -> {prediction, thumb (object URL)}
let token = null;

function readToken() {
  const m = /(?:^|[#&])token=([^&]+)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("apiToken", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname);  // keep the token out of the URL bar
  }
  return sessionStorage.getItem("apiToken");
}

async function api(path, asBlob) {
  const r = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (r.status === 401) { sessionStorage.removeItem("apiToken"); showLogin(); throw new Error("token"); }
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return asBlob ? r.blob() : r.json();
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}

function num(v) { return el("td", { class: "num" }, v == null ? "–" : v); }
function when(ms) { return ms ? new Date(ms).toLocaleTimeString() : ""; }

function setStatus(text, cls) {
  const s = document.getElementById("status");
  s.textContent = text; s.className = "pill " + cls;
}

function renderStages(view) {
  const body = document.querySelector("#stages tbody");
  body.replaceChildren(...view.stages.map(st => {
    const state = st.stalled ? ["stalled", "bad"] : (st.lag ? ["busy", "warn"] : ["ok", "ok"]);
    const reasons = Object.entries(st.dead_letter_reasons || {}).map(([r, n]) => r + " " + n).join(", ");
    return el("tr", { "data-stage": st.stage },
      el("td", {}, st.stage), num(st.workers), num(st.records_in), num(st.records_out),
      num(st.rate_per_s), num(st.lag), el("td", {}, st.dead_letters + (reasons ? " (" + reasons + ")" : "")),
      el("td", {}, el("span", { class: "pill " + state[1] }, state[0])));
  }));
  if (!view.stages.length) body.append(el("tr", {}, el("td", { colspan: 8, class: "hint" }, "no worker answers")));
  const down = view.workers.filter(w => !w.up).length;
  return down;
}

async function imageCard(id) {
  let entry = images.get(id);
  if (!entry) {
    const prediction = await api("/v1/images/" + encodeURIComponent(id));
    let thumb = "";
    try {
      thumb = URL.createObjectURL(await api("/v1/images/" + encodeURIComponent(id) + "/thumbnail?placeholder=1", true));
    } catch (e) { thumb = ""; }
    entry = { prediction, thumb };
    images.set(id, entry);
  }
  const p = entry.prediction;
  const top = (p.top_k || []).slice(0, 3).map(t => el("li", {}, t[1] + " " + Number(t[2]).toFixed(3)));
  return el("div", { class: "card", "data-image": id },
    entry.thumb ? el("img", { src: entry.thumb, alt: p.label || "" }) : el("div", { class: "hint" }, "no thumbnail"),
    el("strong", {}, p.label + " " + Number(p.score).toFixed(3)),
    el("ol", {}, ...top),
    el("div", { class: "id" }, (p.source || "") + " · " + id.slice(0, 16)));
}

async function renderLatest(stats) {
  const ids = (stats.newest || []).slice(0, NEWEST).map(r => r.image_id);
  const cards = await Promise.all(ids.map(id => imageCard(id).catch(() => null)));
  const box = document.getElementById("latest");
  const ok = cards.filter(Boolean);
  box.replaceChildren(...(ok.length ? ok : [el("p", { class: "hint" }, "no classified image yet")]));
  for (const id of images.keys()) {
    if (!ids.includes(id)) { URL.revokeObjectURL(images.get(id).thumb); images.delete(id); }
  }
}

function renderRejections(rej, stats) {
  const body = document.querySelector("#rejections tbody");
  body.replaceChildren(...rej.items.map(r => el("tr", {},
    el("td", { class: "id" }, (r.source || r.image_id).slice(0, 40)), el("td", {}, r.stage),
    el("td", {}, r.reason), el("td", {}, (r.message || "").slice(0, 120)), el("td", {}, when(r.rejected_at)))));
  const reasons = Object.entries(stats.rejections_by_reason || {}).map(([r, n]) => r + ": " + n).join(" · ");
  document.getElementById("reasons").textContent = reasons || "none";
}

async function tick() {
  try {
    const [view, stats, rej] = await Promise.all([
      api("/v1/pipeline"), api("/v1/stats"), api("/v1/rejections?limit=10")]);
    const down = renderStages(view);
    document.getElementById("totals").textContent =
      "stored predictions " + stats.predictions + " · rejections " + stats.rejections +
      " · workers up " + view.workers_up + "/" + view.workers.length;
    renderRejections(rej, stats);
    await renderLatest(stats);
    const stalled = view.stages.some(s => s.stalled);
    if (!view.workers.length) setStatus("live (no worker health endpoint found)", "warn");
    else setStatus(stalled ? "stalled" : (down ? down + " worker(s) down" : "live"), stalled || down ? "bad" : "ok");
  } catch (e) {
    if (e.message !== "token") setStatus("API unreachable, retrying", "warn");
  }
}

function showLogin() {
  if (timer) { clearInterval(timer); timer = null; }
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  setStatus("token needed", "warn");
}

let timer = null;
function start() {
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  tick();
  if (!timer) timer = setInterval(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login").addEventListener("submit", ev => {
    ev.preventDefault();
    token = document.getElementById("token").value.trim();
    sessionStorage.setItem("apiToken", token);
    start();
  });
  token = readToken();
  if (token) start(); else showLogin();
});
