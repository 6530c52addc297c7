// emotion-edge telemetry page. No build step and no libraries: plain canvas drawing, so the page
// works offline in a car. The server sends `hello` (backlog), then `estimate` and `stats`.
"use strict";

const MODALITIES = ["audio", "video", "text"];
const REASONS = ["ok", "dead", "stale", "empty", "disabled"];
const REASON_COLOURS = { ok: "#3fb950", dead: "#e5534b", stale: "#d29922", empty: "#6e7dab", disabled: "#57606a" };
const LABEL_COLOURS = {
  neutral: "#9e9e9e", happy: "#f2c14e", sad: "#4a90d9", angry: "#d64545",
  fear: "#8e6bbf", disgust: "#5a9e4b", surprise: "#f08a3c",
};
const SPARE_COLOURS = ["#e377c2", "#17becf", "#bcbd22", "#8c564b", "#7f7f7f"];
const EXPERT_COLOURS = ["#4a90d9", "#f2c14e", "#3fb950", "#d64545", "#8e6bbf", "#f08a3c"];
// Latency histogram bin edges (ms): log-ish so both sub-ms and stalls are visible.
const LAT_EDGES = [0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, Infinity];

const state = {
  mode: "connecting", source: "", history: [], maxItems: 6000, horizonNs: 300e9,
  paused: false, cursor: -1, spanS: 60, stats: null, connected: false, received: 0,
  lastArrival: null,  // performance.now() when the last live estimate arrived
};
// Live estimates come every hop (0.5 s by default); silence this long means the daemon (or
// the telemetry link) is down, which the page must say rather than show a frozen estimate.
const FEED_SILENT_MS = 2000;

const $ = (id) => document.getElementById(id);

function colourFor(label, i) { return LABEL_COLOURS[label] || SPARE_COLOURS[i % SPARE_COLOURS.length]; }

// ---- data -------------------------------------------------------------------------------------
function addEstimate(est) {
  const h = state.history;
  const last = h.length ? h[h.length - 1] : null;
  // Event time going back by more than the horizon means a new drive (replay restarted).
  if (last && est.t_end_ns < last.t_end_ns - state.horizonNs) h.length = 0;
  h.push(est);
  const cutoff = est.t_end_ns - state.horizonNs;
  let drop = Math.max(0, h.length - state.maxItems);
  while (drop < h.length && h[drop].t_end_ns < cutoff) drop++;
  if (drop > 0) {
    h.splice(0, drop);
    if (state.paused) state.cursor = Math.max(0, state.cursor - drop);
  }
  state.received++;
}

function viewIndex() {
  const n = state.history.length;
  if (!n) return -1;
  return state.paused ? Math.min(Math.max(state.cursor, 0), n - 1) : n - 1;
}

// ---- socket -----------------------------------------------------------------------------------
function connect() {
  const ws = new WebSocket(`ws://${location.host}/ws`);
  ws.onopen = () => { state.connected = true; schedule(); };
  ws.onclose = () => {
    state.connected = false; schedule();
    if (state.mode !== "file") setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "hello") {
      state.mode = msg.mode; state.source = msg.source;
      state.maxItems = msg.mode === "file" ? Infinity : msg.history_max_items;
      state.horizonNs = msg.mode === "file" ? Infinity : msg.history_s * 1e9;
      state.history = [];
      for (const est of msg.history) addEstimate(est);
      state.stats = msg.stats;
      if (msg.mode === "file") { state.paused = true; state.cursor = state.history.length - 1; }
    } else if (msg.type === "estimate") {
      addEstimate(msg.estimate);
      state.lastArrival = performance.now();
    } else if (msg.type === "stats") {
      state.stats = msg.stats;
    }
    schedule();
  };
}

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => { pending = false; render(); });
}

// ---- drawing helpers --------------------------------------------------------------------------
function setupCanvas(canvas) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.height / (canvas.dataset.dpr || 1);
  canvas.dataset.dpr = dpr;
  canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  ctx.font = "11px system-ui, sans-serif";
  return { ctx, w, h };
}

function timeLabel(tNs, refNs) {
  const s = (tNs - refNs) / 1e9;
  return state.mode === "file" ? `${s.toFixed(0)} s` : `${s.toFixed(0)} s`;
}

function visible(endIdx) {
  const h = state.history;
  if (endIdx < 0) return { items: [], t0: 0, t1: 1 };
  const t1 = h[endIdx].t_end_ns, t0 = t1 - state.spanS * 1e9;
  let i = endIdx;
  while (i > 0 && h[i - 1].t_end_ns >= t0) i--;
  return { items: h.slice(i, endIdx + 1), t0, t1 };
}

function drawAxes(ctx, w, h, pad, t0, t1, refNs) {
  ctx.strokeStyle = "#2a3038"; ctx.fillStyle = "#8b949e"; ctx.lineWidth = 1;
  const ticks = 6;
  for (let k = 0; k <= ticks; k++) {
    const x = pad.l + (w - pad.l - pad.r) * k / ticks;
    ctx.beginPath(); ctx.moveTo(x, pad.t); ctx.lineTo(x, h - pad.b); ctx.stroke();
    const t = t0 + (t1 - t0) * k / ticks;
    ctx.fillText(timeLabel(t, refNs), x - 12, h - 4);
  }
}

// ---- panels -----------------------------------------------------------------------------------
function renderNow(est) {
  $("current-label").textContent = est ? est.label : "—";
  $("current-label").dataset.tEnd = est ? String(est.t_end_ns) : "";
  $("confidence").textContent = est ? `${(est.confidence * 100).toFixed(1)} %` : "—";
  $("confidence-bar").style.width = est ? `${(est.confidence * 100).toFixed(1)}%` : "0";
  $("confidence-bar").style.background = est ? colourFor(est.label, 0) : "";
  $("used").textContent = est ? (est.used.length ? est.used.join("+") : "none (prior)") : "—";
  $("latency").textContent = est
    ? (est.latency_ms === null ? "— (no frames in window)" : `${est.latency_ms.toFixed(2)} ms`) : "—";
  const err = $("error");
  err.hidden = !(est && est.error);
  err.textContent = est && est.error ? `model error: ${est.error}` : "";
  const box = $("availability");
  const mods = est ? Object.keys(est.availability) : MODALITIES;
  box.replaceChildren(...mods.map((m) => {
    const chip = document.createElement("span");
    const reason = est ? est.availability[m] : "unknown";
    chip.className = "chip"; chip.id = `avail-${m}`; chip.dataset.state = reason;
    chip.textContent = `${m}: ${reason}`;
    return chip;
  }));
}

function renderProbs(view, labels, refNs) {
  const { ctx, w, h } = setupCanvas($("probs-chart"));
  const pad = { l: 30, r: 8, t: 6, b: 16 };
  const { items, t0, t1 } = view;
  drawAxes(ctx, w, h, pad, t0, t1, refNs);
  const x = (t) => pad.l + (w - pad.l - pad.r) * (t - t0) / Math.max(1, t1 - t0);
  const y = (p) => pad.t + (h - pad.t - pad.b) * (1 - p);
  ctx.fillStyle = "#8b949e";
  for (const p of [0, 0.5, 1]) ctx.fillText(p.toFixed(1), 4, y(p) + 4);
  labels.forEach((label, i) => {
    ctx.strokeStyle = colourFor(label, i); ctx.lineWidth = 1.6; ctx.beginPath();
    items.forEach((est, k) => {
      const px = x(est.t_end_ns), py = y(est.probs[label] ?? 0);
      if (k === 0) ctx.moveTo(px, py); else ctx.lineTo(px, py);
    });
    ctx.stroke();
  });
  $("probs-legend").replaceChildren(...labels.map((label, i) => legendItem(label, colourFor(label, i))));
}

function legendItem(text, colour) {
  const span = document.createElement("span");
  const box = document.createElement("i"); box.style.background = colour;
  span.append(box, text);
  return span;
}

function renderAvailability(view, refNs) {
  const { ctx, w, h } = setupCanvas($("avail-chart"));
  const pad = { l: 44, r: 8, t: 4, b: 16 };
  const { items, t0, t1 } = view;
  drawAxes(ctx, w, h, pad, t0, t1, refNs);
  const x = (t) => pad.l + (w - pad.l - pad.r) * (t - t0) / Math.max(1, t1 - t0);
  const rowH = (h - pad.t - pad.b) / MODALITIES.length;
  MODALITIES.forEach((m, r) => {
    const y0 = pad.t + r * rowH + 2;
    ctx.fillStyle = "#8b949e"; ctx.fillText(m, 2, y0 + rowH / 2 + 2);
    // Merge consecutive windows with the same reason into one bar (no seams between hops).
    // A window covers [t_end - hop, t_end]: from the previous estimate's end, or its own start.
    let runStart = null, runReason = null, runEnd = null;
    const flush = () => {
      if (runReason === null) return;
      ctx.fillStyle = REASON_COLOURS[runReason] || "#444";
      const xa = Math.max(pad.l, x(runStart)), xb = x(runEnd);
      ctx.fillRect(xa, y0, Math.max(1, xb - xa), rowH - 4);
    };
    items.forEach((est, k) => {
      const start = k > 0 ? Math.max(items[k - 1].t_end_ns, est.t_start_ns) : est.t_start_ns;
      const reason = est.availability[m] ?? null;
      if (reason !== runReason || start > runEnd) { flush(); runStart = start; runReason = reason; }
      runEnd = est.t_end_ns;
    });
    flush();
  });
  $("avail-legend").replaceChildren(...REASONS.map((r) => legendItem(r, REASON_COLOURS[r])));
}

function renderRouter(est) {
  const box = $("router");
  if (!est || !Object.keys(est.router).length) { box.textContent = "no modality used"; return; }
  const experts = [...new Set(Object.values(est.router).flatMap((wts) => Object.keys(wts)))];
  const rows = Object.entries(est.router).map(([m, wts]) => {
    const row = document.createElement("div"); row.className = "router-row"; row.id = `router-${m}`;
    const name = document.createElement("span"); name.className = "name"; name.textContent = m;
    const stack = document.createElement("div"); stack.className = "stack";
    experts.forEach((e, i) => {
      const seg = document.createElement("div");
      const wgt = wts[e] || 0;
      seg.style.width = `${(wgt * 100).toFixed(1)}%`;
      seg.style.background = EXPERT_COLOURS[i % EXPERT_COLOURS.length];
      seg.title = `${e}: ${wgt.toFixed(3)}`;
      stack.append(seg);
    });
    const top = Object.entries(wts).sort((a, b) => b[1] - a[1])[0];
    const note = document.createElement("span"); note.className = "mono";
    note.textContent = top ? `${top[0]} ${top[1].toFixed(2)}` : "";
    row.append(name, stack, note);
    return row;
  });
  const legend = document.createElement("div"); legend.className = "legend";
  legend.append(...experts.map((e, i) => legendItem(e, EXPERT_COLOURS[i % EXPERT_COLOURS.length])));
  box.replaceChildren(...rows, legend);
}

// Short column headers for the link table's known fields; unknown fields show their own name.
const LINK_HEADERS = {
  modality: "modality", state: "state", heartbeat_age_ms: "hb age ms", frame_age_ms: "frame age ms",
  frame_rate_hz: "rate Hz", received: "recv", lost: "lost", restarts: "restarts", malformed: "bad",
};

function fmt(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toFixed(1);
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function renderLinks(est) {
  const links = (est && (est.links || est.health)) || (state.stats && state.stats.links) || {};
  const names = Object.keys(links).sort();
  const cols = [...new Set(names.flatMap((n) => Object.keys(links[n])))];
  const head = document.createElement("tr");
  head.append(...["link", ...cols].map((c) => {
    const th = document.createElement("th"); th.textContent = LINK_HEADERS[c] || c; th.title = c; return th;
  }));
  $("links").tHead.replaceChildren(head);
  $("links").tBodies[0].replaceChildren(...names.map((n) => {
    const tr = document.createElement("tr"); tr.id = `link-${n}`;
    const first = document.createElement("td"); first.textContent = n; tr.append(first);
    for (const c of cols) { const td = document.createElement("td"); td.textContent = fmt(links[n][c]); tr.append(td); }
    return tr;
  }));
}

function renderLatency(view) {
  const { ctx, w, h } = setupCanvas($("latency-chart"));
  const lat = view.items.map((e) => e.latency_ms).filter((v) => v !== null).sort((a, b) => a - b);
  const counts = new Array(LAT_EDGES.length - 1).fill(0);
  for (const v of lat) {
    let b = 0; while (b < counts.length - 1 && v >= LAT_EDGES[b + 1]) b++;
    counts[b]++;
  }
  const pad = { l: 8, r: 8, t: 6, b: 16 };
  const bw = (w - pad.l - pad.r) / counts.length, max = Math.max(1, ...counts);
  counts.forEach((c, b) => {
    const bh = (h - pad.t - pad.b) * c / max;
    ctx.fillStyle = "#4a90d9";
    ctx.fillRect(pad.l + b * bw + 1, h - pad.b - bh, bw - 2, bh);
    ctx.fillStyle = "#8b949e";
    const hi = LAT_EDGES[b + 1];
    const edge = hi === Infinity ? `${LAT_EDGES[b] / 1000}s+` : (hi >= 1000 ? `<${hi / 1000}s` : `<${hi}`);
    ctx.fillText(edge, pad.l + b * bw + 2, h - 4);
  });
  const q = (p) => lat[Math.min(lat.length - 1, Math.max(0, Math.ceil(p * lat.length) - 1))];
  $("latency-stats").textContent = lat.length
    ? `n=${lat.length} p50=${q(0.5).toFixed(1)} p99=${q(0.99).toFixed(1)} max=${lat[lat.length - 1].toFixed(1)} ms`
    : "";
}

function renderStats() {
  const s = state.stats;
  const mine = s ? s.dropped_total : 0;
  $("dash-stats").textContent = s
    ? `received ${s.received} · malformed ${s.malformed} · dropped to browsers ${mine} · ` +
      `clients ${s.clients.length} · rss ${(s.rss_bytes / 2 ** 20).toFixed(1)} MiB` +
      (s.last_error ? ` · last error: ${s.last_error}` : "")
    : "";
}

function renderFeed() {
  const feed = $("feed");
  if (state.mode === "file") { feed.hidden = true; return; }
  feed.hidden = false;
  if (state.lastArrival === null) {
    feed.textContent = "no estimates yet"; feed.dataset.state = "waiting"; feed.className = "badge bad";
    return;
  }
  const age = performance.now() - state.lastArrival;
  const silent = age > FEED_SILENT_MS;
  feed.dataset.state = silent ? "silent" : "flowing";
  feed.className = "badge " + (silent ? "bad" : "good");
  feed.textContent = silent ? `no estimates for ${(age / 1000).toFixed(0)} s` : "estimates flowing";
}

function render() {
  const modeBadge = $("mode");
  modeBadge.textContent = state.mode === "file" ? "recording" : (state.paused ? "paused" : state.mode);
  modeBadge.className = "badge" + (state.paused ? " paused" : "");
  $("source").textContent = state.source;
  $("conn").textContent = state.connected ? "connected" : "offline";
  $("conn").className = "badge " + (state.connected ? "good" : "bad");
  $("conn").dataset.state = state.connected ? "open" : "closed";
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  renderFeed();

  const h = state.history, idx = viewIndex();
  const est = idx >= 0 ? h[idx] : null;
  const scrub = $("scrub");
  scrub.max = String(Math.max(0, h.length - 1));
  scrub.value = String(Math.max(0, idx));
  const refNs = state.mode === "file" ? (h.length ? h[0].t_start_ns : 0) : (est ? est.t_end_ns : 0);
  $("cursor-time").textContent = est
    ? (state.mode === "file" ? `t=${((est.t_end_ns - refNs) / 1e9).toFixed(1)} s`
      : `${((est.t_end_ns - h[h.length - 1].t_end_ns) / 1e9).toFixed(1)} s`) + ` · ${idx + 1}/${h.length}`
    : "";
  const view = visible(idx);
  const labels = est ? Object.keys(est.probs) : [];
  renderNow(est);
  renderProbs(view, labels, refNs);
  renderAvailability(view, refNs);
  renderRouter(est);
  renderLinks(est);
  renderLatency(view);
  renderStats();
}

// User actions redraw at once (not on the next animation frame): what the user sees when the
// click returns is the frame they paused on.
$("pause").onclick = () => {
  state.paused = !state.paused;
  if (state.paused) state.cursor = state.history.length - 1;
  render();
};
$("live").onclick = () => { if (state.mode !== "file") state.paused = false; schedule(); };
$("scrub").oninput = (ev) => { state.paused = true; state.cursor = Number(ev.target.value); schedule(); };
$("span").onchange = (ev) => { state.spanS = Number(ev.target.value); schedule(); };
window.onresize = schedule;
setInterval(renderFeed, 500);
connect();
render();
