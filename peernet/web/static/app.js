// peernet dashboard: vanilla JS, no dependencies, nothing fetched from elsewhere.
// Talks to this peer's control API (/api/*) with the session cookie; live
// updates arrive as server-sent events on /api/events.  Everything that comes
// from the network (peer IDs, addresses, repo names) is inserted as text,
// never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";

const state = {
  status: null,
  peers: [],
  shared: [],
  downloads: new Map(),
  sort: { key: "score", dir: -1 },
  filter: "",
};

// -- helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

const short = (id) => (id ? id.slice(0, 10) + "…" : "?");

function bytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function ago(ms) {
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + " s ago";
  if (s < 3600) return Math.round(s / 60) + " min ago";
  if (s < 86400) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function hostPort(address) {
  try {
    const u = new URL(address);
    return u.host || address;
  } catch (e) {
    return address;
  }
}

async function api(method, path, body) {
  const opts = { method, headers: {}, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") opts.headers["X-Peernet"] = "1"; // CSRF guard (see peernet.web)
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const resp = await fetch("/api/" + path, opts);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (resp.status === 401) {
    location.replace("/"); // the session ended: back to the login form
    throw new Error("not logged in");
  }
  if (!resp.ok) {
    const message = data && data.error ? data.error.message : "HTTP " + resp.status;
    const err = new Error(message);
    err.code = data && data.error ? data.error.code : null;
    throw err;
  }
  return data;
}

function debounce(fn, ms) {
  let timer = null;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// -- status, broadcast toggle, overview ---------------------------------------------

async function refreshStatus() {
  const [status, repos] = await Promise.all([api("GET", "status"), api("GET", "repos")]);
  state.status = status;
  state.shared = repos.shared || [];
  renderStatus();
  renderMap();
}

function renderStatus() {
  const s = state.status;
  if (!s) return;
  $("node-id").textContent = s.peer_id;
  $("node-id").title = s.peer_id;
  const pill = $("mode-pill");
  pill.textContent = s.broadcasting ? "broadcasting" : "silent";
  pill.className = "pill " + (s.broadcasting ? "on" : "off");
  const toggle = $("broadcast-toggle");
  toggle.setAttribute("aria-checked", String(s.broadcasting));
  $("broadcast-state").textContent = s.broadcasting
    ? "On: this node is public"
    : "Off: this node is silent";
  $("broadcast-addresses").textContent = s.broadcasting && s.addresses.length
    ? "Published addresses: " + s.addresses.join(", ")
    : s.broadcasting ? "" : "Nothing about this node is published.";

  $("stat-out").textContent = s.links.outbound;
  $("stat-in").textContent = s.links.inbound;
  $("stat-peers").textContent = s.table.broadcasting;
  $("stat-records").textContent = s.table.records;
  $("stat-shared").textContent = state.shared.length;
  $("stat-msgs").textContent = s.stats.received + " / " + s.stats.sent;

  const boot = $("bootstrap-list");
  boot.replaceChildren();
  const entries = Object.entries(s.bootstrap || {});
  if (!entries.length) {
    boot.append(el("li", { class: "muted" },
      s.broadcasting ? "none registered yet" : "none: a silent node registers nowhere"));
  }
  for (const [url, result] of entries) {
    boot.append(el("li", {}, el("code", { text: url }), " ",
      el("span", { class: "badge" + (result === "registered" ? " state-done" : ""), text: result })));
  }
  const shared = $("shared-list");
  shared.replaceChildren();
  if (!state.shared.length) shared.append(el("li", { class: "muted" }, "none"));
  for (const repo of state.shared) {
    shared.append(el("li", {}, el("strong", { text: repo.name }), " ",
      el("span", { class: "muted", text: `${repo.files} files, ${bytes(repo.size)}` })));
  }
}

async function toggleBroadcast() {
  const toggle = $("broadcast-toggle");
  if (!state.status || toggle.disabled) return;
  const want = !state.status.broadcasting;
  toggle.disabled = true;
  toggle.classList.add("busy");
  $("broadcast-error").textContent = "";
  try {
    const answer = await api("POST", "broadcast", { on: want });
    state.status.broadcasting = answer.broadcasting;
    await refreshStatus();
    await refreshPeers();
  } catch (e) {
    $("broadcast-error").textContent = "Could not change broadcasting: " + e.message;
  } finally {
    toggle.disabled = false;
    toggle.classList.remove("busy");
  }
}

// -- peer table ---------------------------------------------------------------------

async function refreshPeers() {
  const data = await api("GET", "peers");
  state.peers = data.peers;
  renderPeers();
  renderMap();
}

// A peer's score is an object (GET /api/peers): {total, availability,
// performance, penalties, refused_until}; tables sort and show its total.
function scoreTotal(peer) {
  const s = peer.score;
  if (s && typeof s === "object") return Number(s.total) || 0;
  return Number(s) || 0;
}

function scoreCell(peer) {
  const s = peer.score && typeof peer.score === "object" ? peer.score : { total: scoreTotal(peer) };
  const parts = [];
  if (s.availability !== undefined) parts.push(`availability ${(100 * s.availability).toFixed(0)} %`);
  if (s.performance !== undefined) parts.push(`performance ${(100 * s.performance).toFixed(0)} %`);
  if (s.penalties) parts.push(`penalties −${Number(s.penalties).toFixed(1)}`);
  const refused = s.refused_until ? new Date(s.refused_until * 1000) : null;
  if (refused) parts.push(`refused until ${refused.toLocaleTimeString()}`);
  return el("td", { class: "num score" + (refused ? " refused" : ""), title: parts.join(" · "),
                    "data-total": scoreTotal(peer) },
    el("span", { class: "total", text: scoreTotal(peer).toFixed(1) }),
    refused ? el("span", { class: "badge warn", text: "refused" }) : null);
}

function sortValue(peer, key) {
  if (key === "repos") return peer.repos.length;
  if (key === "peer_id") return peer.peer_id;
  if (key === "score") return scoreTotal(peer);
  return peer[key];
}

function matches(peer, needle) {
  if (!needle) return true;
  const hay = [peer.peer_id, ...peer.addresses, ...peer.repos.map((r) => r.name)];
  return hay.some((text) => String(text).toLowerCase().includes(needle));
}

function renderPeers() {
  const { key, dir } = state.sort;
  const needle = state.filter.trim().toLowerCase();
  const me = state.status ? state.status.peer_id : null;
  const rows = state.peers.filter((p) => matches(p, needle));
  rows.sort((a, b) => {
    const x = sortValue(a, key), y = sortValue(b, key);
    if (x < y) return -dir;
    if (x > y) return dir;
    return a.peer_id < b.peer_id ? -1 : 1;
  });
  for (const button of document.querySelectorAll("#peer-table th button")) {
    button.classList.toggle("asc", button.dataset.sort === key && dir > 0);
    button.classList.toggle("desc", button.dataset.sort === key && dir < 0);
  }
  const body = $("peer-rows");
  body.replaceChildren();
  for (const p of rows) {
    const when = new Date(p.issued_at);
    body.append(el("tr", { "data-peer-id": p.peer_id, class: "peer-row" },
      el("td", {},
        el("code", { title: p.peer_id, text: short(p.peer_id) }),
        p.peer_id === me ? el("span", { class: "badge self", text: "this node" }) : null,
        p.broadcasting ? null : el("span", { class: "badge", text: "withdrawn" })),
      el("td", { class: "addr" }, p.addresses.map((a) => el("code", { title: a, text: hostPort(a) }))),
      el("td", { class: "repos" }, p.repos.length
        ? p.repos.map((r) => el("span", { class: "badge", title: `${r.files} files, ${bytes(r.size)}`, text: r.name }))
        : el("span", { class: "muted", text: "–" })),
      scoreCell(p),
      el("td", { class: "seen", title: when.toISOString(), "data-ms": p.issued_at, text: ago(p.issued_at) }),
      el("td", { class: "num", text: p.version })));
  }
  if (!rows.length) {
    body.append(el("tr", {}, el("td", { colspan: 6, class: "muted",
      text: state.peers.length ? "No peer matches the filter." : "No peers known yet." })));
  }
  $("peer-count").textContent = `${rows.length} of ${state.peers.length} peers shown` +
    ` · sorted by ${key === "issued_at" ? "last seen" : key.replace("_", " ")}` +
    (dir < 0 ? ", highest first" : ", lowest first");
}

function onSort(event) {
  const button = event.target.closest("button[data-sort]");
  if (!button) return;
  const key = button.dataset.sort;
  if (state.sort.key === key) state.sort.dir = -state.sort.dir;
  else state.sort = { key, dir: key === "peer_id" ? 1 : -1 };
  renderPeers();
}

// -- network map (inline SVG) -------------------------------------------------------

function renderMap() {
  const map = $("map");
  const s = state.status;
  if (!s) return;
  map.replaceChildren();
  const W = 640, H = 380, cx = W / 2, cy = H / 2 - 10;
  const linked = new Set(s.outbound_peers || []);
  const known = state.peers.filter((p) => p.broadcasting && p.peer_id !== s.peer_id);
  known.sort((a, b) => (linked.has(b.peer_id) - linked.has(a.peer_id)) || (scoreTotal(b) - scoreTotal(a)));
  const shown = known.slice(0, 16);
  const edges = svg("g", {}), nodes = svg("g", {});
  map.append(edges, nodes);

  shown.forEach((p, i) => {
    const angle = -Math.PI / 3 + (2 * Math.PI * i) / Math.max(shown.length, 1);
    const x = cx + 230 * Math.cos(angle), y = cy + 135 * Math.sin(angle);
    const isLinked = linked.has(p.peer_id);
    edges.append(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: "edge" + (isLinked ? "" : " known") }));
    const g = svg("g", { class: "peer" + (isLinked ? " linked" : ""), "data-peer-id": p.peer_id });
    g.append(svg("title", {}, p.peer_id + "\n" + p.addresses.join("\n")));
    g.append(svg("circle", { cx: x, cy: y, r: 16 }));
    g.append(svg("text", { x, y: y + 4 }, String(p.repos.length)));
    g.append(svg("text", { x, y: y + 31 }, short(p.peer_id)));
    const addr = p.addresses.length ? hostPort(p.addresses[0]) : "";
    g.append(svg("text", { x, y: y + 43, class: "sub" }, addr));
    const names = p.repos.map((r) => r.name);
    g.append(svg("text", { x, y: y + 55, class: "sub" }, names.length
      ? "repos: " + names.slice(0, 2).join(", ") + (names.length > 2 ? ", …" : "")
      : "no repos"));
    nodes.append(g);
  });
  if (known.length > shown.length) {
    nodes.append(svg("text", { x: W - 70, y: H - 12, class: "sub" }, `+${known.length - shown.length} more`));
  }
  const unnamed = Math.max(0, s.links.outbound - [...linked].filter((id) => shown.some((p) => p.peer_id === id)).length);
  if (unnamed > 0) {
    const x = 80, y = 40;
    edges.append(svg("line", { x1: cx, y1: cy, x2: x, y2: y, class: "edge" }));
    const g = svg("g", { class: "peer linked" });
    g.append(svg("circle", { cx: x, cy: y, r: 16 }));
    g.append(svg("text", { x, y: y + 4 }, String(unnamed)));
    g.append(svg("text", { x, y: y + 31, class: "sub" }, "other outbound links"));
    nodes.append(g);
  }
  if (s.links.inbound > 0) {
    const x = 80, y = H - 60;
    edges.append(svg("line", { x1: x, y1: y, x2: cx, y2: cy, class: "edge inbound" }));
    const g = svg("g", { class: "anon" });
    g.append(svg("circle", { cx: x, cy: y, r: 18 }));
    g.append(svg("text", { x, y: y + 4 }, String(s.links.inbound)));
    g.append(svg("text", { x, y: y + 33, class: "sub" }, "inbound (anonymous)"));
    nodes.append(g);
  }
  const me = svg("g", { class: "self" + (s.broadcasting ? "" : " silent") });
  me.append(svg("title", {}, s.peer_id));
  me.append(svg("circle", { cx, cy, r: 26 }));
  me.append(svg("text", { x: cx, y: cy + 4, class: "white" }, "you"));
  me.append(svg("text", { x: cx, y: cy + 42 }, "this node · " + (s.broadcasting ? "broadcasting" : "silent")));
  me.append(svg("text", { x: cx, y: cy + 54, class: "sub" },
    `${s.links.outbound} out · ${s.links.inbound} in`));
  nodes.append(me);
  if (!known.length) {
    nodes.append(svg("text", { x: cx, y: 28, class: "sub" }, "no broadcasting peer known yet"));
  }
}

// -- repo search --------------------------------------------------------------------

async function onSearch(event) {
  event.preventDefault();
  const name = $("search-input").value.trim();
  if (!name) return;
  const button = $("search-button");
  const list = $("search-results");
  button.disabled = true;
  button.textContent = "Searching…";
  $("search-status").textContent = `Asking the network who shares “${name}”…`;
  list.replaceChildren();
  const started = performance.now();
  try {
    const data = await api("POST", "search", { repo: name, network_only: true, timeout: 3 });
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    renderResults(name, data.results, seconds);
  } catch (e) {
    $("search-status").textContent = "The search failed: " + e.message;
  } finally {
    button.disabled = false;
    button.textContent = "Search the network";
  }
}

function renderResults(name, results, seconds) {
  // Group the matching repos of all answering peers by content (btih).
  const groups = new Map();
  for (const { record } of results) {
    for (const repo of record.repos || []) {
      if (repo.name !== name) continue;
      const key = repo.btih || repo.btmh || repo.name;
      if (!groups.has(key)) groups.set(key, { repo, peers: [] });
      groups.get(key).peers.push(record);
    }
  }
  const list = $("search-results");
  list.replaceChildren();
  $("search-status").textContent = results.length
    ? `${results.length} peer${results.length === 1 ? "" : "s"} answered in ${seconds} s.`
    : `Nobody on the network shares “${name}” (asked for ${seconds} s).`;
  for (const { repo, peers } of groups.values()) {
    const button = el("button", { type: "button", class: "primary download-button", text: "Download" });
    button.addEventListener("click", () => startDownload(repo.name, button));
    list.append(el("li", { class: "result", "data-repo": repo.name },
      el("div", { class: "what" },
        el("div", { class: "name", text: repo.name }),
        el("div", { class: "muted small",
          text: `${repo.files} files · ${bytes(repo.size)}` + (repo.btih ? ` · btih ${repo.btih.slice(0, 12)}…` : "") }),
        el("div", { class: "small" }, `shared by ${peers.length} peer${peers.length === 1 ? "" : "s"}: `,
          peers.map((p) => el("code", { title: p.peer_id + "\n" + p.addresses.join("\n"), text: short(p.peer_id) + " " })))),
      button));
  }
}

async function startDownload(name, button) {
  button.disabled = true;
  button.textContent = "Starting…";
  try {
    const job = await api("POST", "get", { repo: name });
    upsertDownload(job);
    button.textContent = "Started";
  } catch (e) {
    button.disabled = false;
    button.textContent = "Download";
    $("search-status").textContent = "The download did not start: " + e.message;
  }
}

// -- downloads ----------------------------------------------------------------------

function upsertDownload(job) {
  const old = state.downloads.get(job.id);
  // Events may arrive out of order with the POST answer: never go back from an end state.
  if (old && ["done", "failed", "cancelled"].includes(old.state) && old.state !== job.state) return;
  state.downloads.set(job.id, job);
  renderDownload(job);
}

function renderDownload(job) {
  $("downloads-empty").hidden = true;
  let item = document.querySelector(`#downloads > li[data-id="${job.id}"]`);
  if (!item) {
    item = el("li", { "data-id": job.id, class: "download" });
    $("downloads").prepend(item);
  }
  const pct = Math.round(job.progress * 1000) / 10;
  const bar = el("div", {});
  bar.style.width = pct + "%";
  const active = ["starting", "downloading", "verifying"].includes(job.state);
  item.className = "download " + job.state;
  item.replaceChildren(...[
    el("div", { class: "dl-head" },
      el("span", {}, el("span", { class: "name", text: job.name }), " ",
        el("span", { class: "badge state state-" + job.state, text: job.state })),
      active ? el("button", { type: "button", class: "cancel", text: "Cancel",
        onclick: () => api("POST", "cancel", { id: job.id }).then(upsertDownload).catch(() => {}) }) : null),
    el("div", { class: "bar", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": pct }, bar),
    el("div", { class: "dl-meta" },
      el("span", { class: "pct", text: (Number.isInteger(pct) ? pct : pct.toFixed(1)) + " %" }),
      job.state === "downloading" ? el("span", { text: bytes(job.rate) + "/s" }) : null,
      el("span", { text: `${job.seeders} seeder${job.seeders === 1 ? "" : "s"}, ${job.sources} sending` }),
      el("span", {}, "to ", el("code", { text: job.dest }))),
    job.error ? el("p", { class: "error", text: job.error }) : null,
    job.files && job.files.length
      ? el("p", { class: "files-caption",
          text: `${job.files.length} files, SHA-256 verified against the seeders' signed manifest` })
      : null,
    job.files && job.files.length
      ? el("ul", { class: "files plain" }, job.files.map((f) => el("li", {},
          el("span", { class: "ok", title: "SHA-256 verified against the signed manifest", text: "✓" }),
          el("span", { class: "path", text: f.path }),
          el("span", { class: "muted", text: bytes(f.size) }),
          el("code", { class: "sha256", title: "SHA-256", text: f.sha256 }))))
      : null,
  ].filter(Boolean));
}

async function refreshDownloads() {
  try {
    const data = await api("GET", "downloads");
    for (const job of data.downloads) upsertDownload(job);
  } catch (e) {
    if (e.code !== "no_repos") throw e;
  }
}

// -- live events --------------------------------------------------------------------

function connectEvents() {
  const dot = $("live-dot"), text = $("live-text");
  const events = new EventSource("/api/events");
  const tableChanged = debounce(() => {
    refreshPeers().catch(() => {});
    refreshStatus().catch(() => {});
  }, 250);
  events.addEventListener("open", () => {
    dot.className = "dot live";
    text.textContent = "live";
  });
  events.addEventListener("error", () => {
    dot.className = "dot down";
    text.textContent = "reconnecting…";
    if (events.readyState === EventSource.CLOSED) {
      // Refused (e.g. the session ended): check, then retry once in a while.
      setTimeout(() => { refreshStatus().then(connectEvents, () => {}); }, 3000);
    }
  });
  events.addEventListener("table", tableChanged);
  events.addEventListener("download", (e) => upsertDownload(JSON.parse(e.data)));
}

// -- start --------------------------------------------------------------------------

async function logout() {
  try {
    await fetch("/logout", { method: "POST", headers: { "X-Peernet": "1" }, credentials: "same-origin" });
  } finally {
    location.replace("/");
  }
}

function start() {
  $("broadcast-toggle").addEventListener("click", toggleBroadcast);
  $("peer-table").querySelector("thead").addEventListener("click", onSort);
  $("peer-filter").addEventListener("input", (e) => { state.filter = e.target.value; renderPeers(); });
  $("search-form").addEventListener("submit", onSearch);
  $("logout").addEventListener("click", logout);
  refreshStatus()
    .then(refreshPeers)
    .then(refreshDownloads)
    .then(() => document.body.setAttribute("data-ready", "1"))
    .catch((e) => { $("broadcast-error").textContent = "Could not reach the peer: " + e.message; });
  connectEvents();
  // Links and scores change without table events: a light refresh now and then.
  setInterval(() => {
    refreshStatus().catch(() => {});
    refreshPeers().catch(() => {});
  }, 5000);
}

start();
