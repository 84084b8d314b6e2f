// The gateway's page: sign in, see and act on what is mine. Every action goes through the
// dialects' own API (Jupyter, Backend.AI v2, Skaha) with the sign-in cookie and its CSRF header.
// No framework and nothing from a CDN: the page must work on a closed network.
"use strict";

const BASE = document.querySelector('meta[name="kge-base"]').content;
const $ = (id) => document.getElementById(id);
const state = { me: null, items: new Map(), series: new Map(), socket: null, retry: 0, following: null,
                folder: null, folderPath: ".", specs: [], view: "mine" };
const HISTORY = 100;

// ---- the API -------------------------------------------------------------------------------------
class ApiError extends Error { constructor(status, message) { super(message); this.status = status; } }

async function api(method, path, { json, form, body, raw } = {}) {
  const headers = {};
  if (method !== "GET" && state.me && state.me.csrf) headers[state.me.csrf_header] = state.me.csrf;
  let payload = body;
  if (json !== undefined) { headers["Content-Type"] = "application/json"; payload = JSON.stringify(json); }
  if (form !== undefined) payload = new URLSearchParams(form);
  const r = await fetch(BASE + path, { method, headers, body: payload, credentials: "same-origin", cache: "no-store" });
  const type = r.headers.get("Content-Type") || "";
  const text = await r.text();
  if (!r.ok) {
    if (r.status === 401 && path !== "ui/api/signin") signedOut("Your sign-in has ended: sign in again.");
    throw new ApiError(r.status, errorText(text, type, r.status));
  }
  if (raw) return text;
  return type.includes("json") && text ? JSON.parse(text) : text;
}

function errorText(text, type, status) {
  // Each dialect's own error format: problem+json's title, Jupyter's message, Skaha's plain text.
  if (type.includes("json")) {
    try { const b = JSON.parse(text); return b.title || b.message || b.reason || `error ${status}`; } catch (e) { /* plain */ }
  }
  return (text || `error ${status}`).trim();
}

function showError(el, e) { el.textContent = e ? (e.message || String(e)) : ""; }

// ---- small helpers -------------------------------------------------------------------------------
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c.nodeType ? c : String(c));
  return el;
}
function bytes(n) {
  if (!n) return "0";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(n < 10 && i ? 1 : 0)} ${u[i]}`;
}
function ago(ts) {
  if (!ts) return "—";
  return span(Math.max(0, Date.now() / 1000 - ts));
}
function span(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}
function origin() { return location.origin + BASE; }

// ---- signing in and out --------------------------------------------------------------------------
async function start() {
  try {
    state.me = await api("GET", "ui/api/me");
  } catch (e) {
    signedOut(e.status === 401 ? "" : e.message);
    return;
  }
  signedIn();
}

function signedOut(message) {
  if (state.socket) { state.socket.onclose = null; state.socket.close(); state.socket = null; }
  state.me = null; state.items.clear(); state.series.clear();
  $("app").hidden = true; $("who").hidden = true; $("detail").hidden = true; $("signin").hidden = false;
  $("signin-error").textContent = message || "";
  $("secret-key").value = "";
  (($("access-key").value ? $("secret-key") : $("access-key"))).focus();
}

function signedIn() {
  const me = state.me;
  $("signin").hidden = true; $("app").hidden = false; $("who").hidden = false;
  $("who-name").textContent = `${me.user}${me.admin ? " (admin)" : ""}`;
  $("tab-admin").hidden = !me.admin;
  connectLive();
  loadForms();
}

$("signin-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  try {
    state.me = await api("POST", "ui/api/signin", { json: { access_key: $("access-key").value, secret_key: $("secret-key").value } });
    $("secret-key").value = "";
    signedIn();
  } catch (e) { showError($("signin-error"), e); }
});
$("signin-cert").addEventListener("click", async () => {
  try { state.me = await api("POST", "ui/api/signin", { json: { certificate: true } }); signedIn(); }
  catch (e) { showError($("signin-error"), e); }
});
$("signout").addEventListener("click", async () => {
  try { await api("POST", "ui/api/signout"); } catch (e) { /* signed out anyway */ }
  signedOut("Signed out.");
});

// ---- tabs (arrow keys move between them, as WAI-ARIA tabs do) ------------------------------------
const TABS = ["mine", "folders", "admin"];
function selectTab(name) {
  state.view = name;
  for (const t of TABS) {
    $(`tab-${t}`).setAttribute("aria-selected", String(t === name));
    $(`tab-${t}`).tabIndex = t === name ? 0 : -1;
    $(`view-${t}`).hidden = t !== name;
  }
  if (name === "folders") loadFolders();
  if (name === "admin") loadAdmin();
}
for (const t of TABS) {
  $(`tab-${t}`).addEventListener("click", () => selectTab(t));
  $(`tab-${t}`).addEventListener("keydown", (ev) => {
    if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
    const shown = TABS.filter((x) => !$(`tab-${x}`).hidden);
    const next = shown[(shown.indexOf(t) + (ev.key === "ArrowRight" ? 1 : shown.length - 1)) % shown.length];
    selectTab(next); $(`tab-${next}`).focus();
  });
}

// ---- the live list -------------------------------------------------------------------------------
function connectLive() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + BASE + "ui/api/live";
  const ws = new WebSocket(url);
  state.socket = ws;
  $("live-state").textContent = "connecting…";
  ws.onopen = () => { state.retry = 0; $("live-state").textContent = "live"; if (state.following) ws.send(JSON.stringify({ follow: state.following })); };
  ws.onmessage = (ev) => {
    const msg = JSON.parse(ev.data);
    if (msg.type === "items") received(msg);
    else if (msg.type === "log") appendLog(msg.id, msg.data);
    else if (msg.type === "log-end") endLog(msg.id, msg.reason);
  };
  ws.onclose = async (ev) => {
    if (state.socket !== ws) return;
    state.socket = null;
    if (ev.code === 4001) { signedOut(ev.reason || "Your sign-in has ended: sign in again."); return; }
    $("live-state").textContent = "reconnecting…";
    try { state.me = await api("GET", "ui/api/me"); } catch (e) { if (e.status === 401) return; }
    state.retry = Math.min(state.retry + 1, 6);
    setTimeout(() => { if (state.me && !state.socket) connectLive(); }, 250 * 2 ** state.retry);
  };
}

function received(msg) {
  const seen = new Set();
  for (const item of msg.items) {
    seen.add(item.id);
    let series = state.series.get(item.id);
    if (!series || msg.series) { series = item.series || []; state.series.set(item.id, series); }
    const last = series[series.length - 1];
    if (item.usage && (!last || last[0] !== item.usage[0])) { series.push(item.usage); if (series.length > HISTORY) series.shift(); }
    state.items.set(item.id, item);
  }
  for (const id of [...state.items.keys()]) if (!seen.has(id)) { state.items.delete(id); state.series.delete(id); }
  renderItems();
}

// A push re-renders every card, but the page keeps each card's element and every part of it that
// did not change (its buttons, above all): a click or the focus is never lost to a push.
function renderItems() {
  const box = $("items");
  const focused = document.activeElement && document.activeElement.dataset.key;
  const items = [...state.items.values()];
  const old = new Map([...box.children].map((el) => [el.dataset.id, el]));
  const cards = items.map((it) => {
    const fresh = renderItem(it), kept = old.get(it.id);
    if (!kept) return fresh;
    patchCard(kept, fresh);
    return kept;
  });
  const sameOrder = cards.length === box.children.length && cards.every((c, i) => box.children[i] === c);
  if (!sameOrder) box.replaceChildren(...cards);
  $("items-empty").hidden = items.length > 0;
  if (focused && document.activeElement === document.body) {
    const again = box.querySelector(`[data-key="${CSS.escape(focused)}"]`); if (again) again.focus();
  }
}

function patchCard(kept, fresh) {
  for (const name of ["class", "data-restarts", "aria-label"]) kept.setAttribute(name, fresh.getAttribute(name));
  const was = [...kept.children], now = [...fresh.children];
  if (was.length !== now.length) { kept.replaceChildren(...now); return; }
  now.forEach((part, i) => { if (!was[i].isEqualNode(part)) kept.replaceChild(part, was[i]); });
}

function sparkline(values, max) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", "0 0 100 28"); svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  if (values.length > 1) {
    const top = Math.max(max || 0, ...values, 1e-9) * 1.2;  // the line never sits on the top edge
    const pts = values.map((v, i) => `${(i * 100) / (values.length - 1)},${27 - (v / top) * 26}`).join(" ");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    line.setAttribute("points", pts);
    svg.append(line);
  }
  return svg;
}

const DIALECT = { jupyter: "Jupyter kernel", v2: "v2 kernel", skaha: "Skaha" };

function renderItem(it) {
  const series = state.series.get(it.id) || [];
  const use = it.usage || series[series.length - 1];
  const key = (what) => `${it.id}:${what}`;
  const act = (label, what, fn, cls) => h("button", { type: "button", class: cls, "data-key": key(what),
    "aria-label": `${label} ${it.name}`, onclick: () => run(fn) }, label);
  const actions = [];
  if (it.kind === "kernel") {
    actions.push(act("Restart", "restart", () => api("POST", `api/kernels/${it.id}/restart`)));
    actions.push(act("Interrupt", "interrupt", () => api("POST", `api/kernels/${it.id}/interrupt`)));
    actions.push(act("Connect", "connect", () => showConnect(it)));
    actions.push(act("Delete", "delete", () => api("DELETE", `api/kernels/${it.id}`), "danger"));
  } else {
    if (it.connect_path && it.state === "Running") {
      actions.push(h("a", { href: it.connect_path, target: "_blank", rel: "noopener", class: "button-link", "data-key": key("open") }, "Open notebook"));
    }
    actions.push(act("Logs", "logs", () => showLogs(it)));
    actions.push(act("Events", "events", () => showEvents(it)));
    actions.push(act("Renew", "renew", () => api("POST", `skaha/v0/session/${it.id}?action=renew`)));
    actions.push(act("Connect", "connect", () => showConnect(it)));
    actions.push(act("Delete", "delete", () => api("DELETE", `skaha/v0/session/${it.id}`), "danger"));
  }
  const ends = it.ends_at ? `${it.ends_why} in ${span(Math.max(0, it.ends_at - Date.now() / 1000))}` : (it.ends_why || "never ends by itself");
  const idle = it.last_activity ? ` · idle ${ago(it.last_activity)}` : "";
  const title = it.kind === "kernel" ? it.name : `${it.name} (${it.type})`;
  return h("article", { class: `item s-${it.state}`, "data-id": it.id, "data-restarts": it.restarts || 0,
                        "aria-label": `${DIALECT[it.dialect]} ${title}` },
    h("div", { class: "head" },
      h("div", { class: "title" }, h("span", { class: `badge ${it.dialect}` }, DIALECT[it.dialect]), title),
      h("span", { class: "state" }, it.state)),
    h("div", { class: "meta mono" }, it.token ? `${it.token} · ${it.id}` : it.id),
    h("div", { class: "meta" }, [state.me && state.me.admin ? `owner ${it.owner} · ` : "", `age ${ago(it.created)}${idle}`,
      it.node ? ` · node ${it.node}` : "", it.restarts ? ` · restarted ${it.restarts}×` : "",
      it.kind === "session" ? ` · ${it.image}` : ""].join("")),
    it.reason ? h("div", { class: "meta error" }, it.reason) : null,
    h("div", { class: "figs" },
      h("div", { class: "fig mem" }, `Memory ${use ? bytes(use[1]) : "—"} of ${bytes(it.limits.memory)}`,
        sparkline(series.map((s) => s[1]), 0)),
      h("div", { class: "fig cpu" }, `CPU ${use ? use[2].toFixed(2) : "—"} of ${it.limits.cpus} cores`,
        sparkline(series.map((s) => s[2]), 0.05))),
    h("div", { class: "meta" }, ends),
    h("div", { class: "actions" }, actions));
}

async function run(fn) {
  showError($("action-error"), null);
  try { await fn(); } catch (e) { showError($("action-error"), e); }
}

// ---- details: logs (followed), events, connect ---------------------------------------------------
function openDetail(title, ...content) {
  $("detail-title").textContent = title;
  $("detail-body").replaceChildren(...content);
  $("detail").hidden = false;
  $("detail").focus();
}
function closeDetail() {
  if (state.following && state.socket) state.socket.send(JSON.stringify({ unfollow: state.following }));
  state.following = null;
  $("detail").hidden = true;
}
$("detail-close").addEventListener("click", closeDetail);
document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && !$("detail").hidden) closeDetail(); });

function showLogs(it) {
  closeDetail();
  state.following = it.id;
  openDetail(`Logs of ${it.name} (following)`, h("pre", { class: "log", id: "log", "aria-live": "off" }, ""));
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({ follow: it.id }));
}
function appendLog(id, data) {
  if (state.following !== id) return;
  const pre = $("log"); if (!pre) return;
  const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.append(data);
  if (pre.textContent.length > 2_000_000) pre.textContent = pre.textContent.slice(-1_000_000);
  if (stick) pre.scrollTop = pre.scrollHeight;
}
function endLog(id, reason) {
  if (state.following !== id) return;
  $("detail-title").textContent = $("detail-title").textContent.replace(" (following)", "");
  appendLog(id, `\n[${reason}]\n`);
  state.following = null;
}

async function showEvents(it) {
  closeDetail();
  const text = await api("GET", `skaha/v0/session/${it.id}?view=events`, { raw: true });
  openDetail(`Events of ${it.name}`, h("pre", { class: "log" }, text));
}

function copyBox(text) {
  const pre = h("pre", {}, text);
  const btn = h("button", { type: "button", onclick: async () => {
    try { await navigator.clipboard.writeText(text); }
    catch (e) { const r = document.createRange(); r.selectNodeContents(pre); const s = getSelection(); s.removeAllRanges(); s.addRange(r); document.execCommand("copy"); }
    btn.textContent = "Copied"; setTimeout(() => { btn.textContent = "Copy"; }, 1500);
  } }, "Copy");
  return h("div", { class: "cmd" }, pre, btn);
}

function showConnect(it) {
  closeDetail();
  const me = state.me, url = origin().replace(/\/$/, "");
  const cred = me.access_key ? `${me.access_key}:<your secret key>` : "<the gateway token>";
  const parts = [];
  if (it.kind === "kernel") {
    parts.push(h("h3", {}, "JupyterLab (open the running kernel from the kernel picker)"),
      copyBox(`jupyter lab --gateway-url=${url} --GatewayClient.auth_token='${cred}'`));
    if (me.access_key) {
      parts.push(h("h3", {}, "backend.ai-client"),
        copyBox(`export BACKEND_ENDPOINT=${url} BACKEND_ACCESS_KEY=${me.access_key} BACKEND_SECRET_KEY='<your secret key>'\n` +
          `backend.ai run -t ${it.token || it.id} python3 -c 'print("hello")'`));
    }
    parts.push(h("h3", {}, "HTTP"), copyBox(`curl -H "Authorization: token ${cred}" ${url}/api/kernels/${it.id}`));
  } else {
    parts.push(h("h3", {}, "canfar"),
      copyBox(`export CANFAR_URL=${url}/skaha/v1 CANFAR_TOKEN='${cred}'\ncanfar info ${it.id}\ncanfar logs ${it.id}`));
    parts.push(h("h3", {}, "skaha (Python)"),
      copyBox(`from skaha.session import Session\ns = Session(server="${url}/skaha", version="v0", token="${cred}")\nprint(s.info(ids="${it.id}"))`));
  }
  openDetail(`Connect to ${it.name}`, ...parts);
}

// ---- starting things -----------------------------------------------------------------------------
async function loadForms() {
  try {
    const specs = await api("GET", "api/kernelspecs");
    const names = Object.keys(specs.kernelspecs || {}).sort();
    $("k-spec").replaceChildren(...names.map((n) => h("option", { value: n, selected: n === specs.default },
      `${specs.kernelspecs[n].spec.display_name} (${n})`)));
    const ctx = await api("GET", "skaha/v0/context");
    $("s-cores").replaceChildren(...ctx.cores.options.map((c) => h("option", { selected: c === ctx.cores.default }, c)));
    $("s-ram").replaceChildren(...ctx.memoryGB.options.map((c) => h("option", { selected: c === ctx.memoryGB.default }, c)));
    await loadImages();
  } catch (e) { showError($("action-error"), e); }
}
async function loadImages() {
  const images = await api("GET", `skaha/v0/image?type=${encodeURIComponent($("s-type").value)}`);
  $("s-image").replaceChildren(...images.map((i) => h("option", { value: i.id }, i.id)));
}
$("s-type").addEventListener("change", () => run(loadImages));

$("start-kernel").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, err = form.querySelector(".error");
  showError(err, null);
  const config = {};
  if ($("k-cores").value.trim()) config.instanceCores = $("k-cores").value.trim();
  const ram = $("k-ram").value.trim();  // GiB; a size with its unit ("512m") is sent as it is
  if (ram) config.instanceMemory = /^\d+(\.\d+)?$/.test(ram) ? `${ram}g` : ram;
  const token = `page-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  form.querySelector("button").disabled = true;
  try { await api("POST", "v2/kernel/create", { json: { lang: $("k-spec").value, clientSessionToken: token, config } }); form.reset(); }
  catch (e) { showError(err, e); }
  finally { form.querySelector("button").disabled = false; }
});

$("start-session").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target, err = form.querySelector(".error");
  showError(err, null);
  const params = { name: $("s-name").value.trim(), image: $("s-image").value, type: $("s-type").value,
                   cores: $("s-cores").value, ram: $("s-ram").value };
  if ($("s-cmd").value.trim()) params.cmd = $("s-cmd").value.trim();
  if ($("s-args").value.trim()) params.args = $("s-args").value.trim();
  form.querySelector("button").disabled = true;
  try { await api("POST", "skaha/v0/session", { form: params }); }
  catch (e) { showError(err, e); }
  finally { form.querySelector("button").disabled = false; }
});

// ---- folders -------------------------------------------------------------------------------------
async function loadFolders() {
  showError($("folders-error"), null);
  try {
    const folders = await api("GET", "v2/folders");
    $("folders").replaceChildren(...folders.map((f) => h("li", {},
      h("button", { type: "button", "data-folder": f.name, onclick: () => openFolder(f.name, ".") }, `${f.name} (${f.numFiles} files)`))));
  } catch (e) { showError($("folders-error"), e); }
}
$("new-folder").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError($("folders-error"), null);
  try { await api("POST", "v2/folders", { json: { name: $("folder-name").value.trim() } }); $("folder-name").value = ""; await loadFolders(); }
  catch (e) { showError($("folders-error"), e); }
});

async function openFolder(name, path) {
  state.folder = name; state.folderPath = path;
  $("folder-view").hidden = false;
  $("folder-title").textContent = name;
  $("folder-path").textContent = `/home/work/${name}/${path === "." ? "" : path}`;
  showError($("files-error"), null);
  try {
    const out = await api("GET", `v2/folders/${encodeURIComponent(name)}/files?path=${encodeURIComponent(path)}`);
    const rows = [];
    if (path !== ".") {
      const up = path.split("/").slice(0, -1).join("/") || ".";
      rows.push(h("tr", {}, h("td", {}, h("button", { type: "button", class: "quiet", onclick: () => openFolder(name, up) }, "..")), h("td"), h("td"), h("td")));
    }
    for (const f of out.files) {
      const rel = path === "." ? f.filename : `${path}/${f.filename}`;
      const nameCell = f.type === "DIRECTORY"
        ? h("button", { type: "button", class: "quiet", onclick: () => openFolder(name, rel) }, `${f.filename}/`)
        : f.filename;
      const link = f.type === "DIRECTORY" ? "" : h("a", { href: `${BASE}v2/folders/${encodeURIComponent(name)}/download?file=${encodeURIComponent(rel)}`,
        download: f.filename }, "Download");
      rows.push(h("tr", { "data-file": f.filename }, h("td", {}, nameCell), h("td", {}, f.type === "DIRECTORY" ? "" : bytes(f.size)),
        h("td", {}, new Date(f.mtime).toLocaleString()), h("td", {}, link)));
    }
    $("files").replaceChildren(...rows);
  } catch (e) { showError($("files-error"), e); }
}
$("upload").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const files = $("upload-files").files;
  if (!state.folder || !files.length) return;
  const data = new FormData();
  for (const f of files) data.append("src", f, state.folderPath === "." ? f.name : `${state.folderPath}/${f.name}`);
  showError($("files-error"), null);
  try { await api("POST", `v2/folders/${encodeURIComponent(state.folder)}/upload`, { body: data }); $("upload-files").value = ""; await openFolder(state.folder, state.folderPath); }
  catch (e) { showError($("files-error"), e); }
});

// ---- the operator's view -------------------------------------------------------------------------
async function loadAdmin() {
  showError($("keypairs-error"), null);
  try {
    const cap = await api("GET", "ui/api/admin/capacity");
    const share = cap.budget ? Math.min(100, (100 * cap.promised) / cap.budget) : 0;
    const bar = h("div", { class: "bar", role: "img", "aria-label": `${share.toFixed(0)}% of the memory budget promised` }, h("div"));
    bar.firstChild.style.width = `${share}%`;
    $("capacity").replaceChildren(
      h("p", {}, `Memory promised ${bytes(cap.promised)} of ${cap.budget ? bytes(cap.budget) : "no budget"} · ${cap.kernels} kernels` +
        `${cap.max_kernels ? ` (at most ${cap.max_kernels})` : ""} · ${cap.sessions} sessions`), bar,
      h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Node"), h("th", {}, "Memory"), h("th", {}, "Cores"), h("th", {}, "Promised"), h("th", {}, "Kernels"), h("th", {}, "Sessions"))),
        h("tbody", {}, cap.nodes.map((n) => h("tr", {}, h("td", {}, n.name || "this host"), h("td", {}, bytes(n.memory)), h("td", {}, n.cpus),
          h("td", {}, bytes(n.promised)), h("td", {}, n.kernels), h("td", {}, n.sessions))))));
    $("pools").replaceChildren(...Object.entries(cap.pools).map(([name, p]) => h("tr", {}, h("td", {}, name), h("td", {}, p.ready), h("td", {}, p.size), h("td", {}, `${p.min}–${p.max}`))));
    $("pool-hits").textContent = `${cap.pool_hits} starts served from a pool, ${cap.pool_misses} cold.`;
    await loadKeyPairs();
  } catch (e) { showError($("keypairs-error"), e); }
}
async function loadKeyPairs() {
  const out = await api("GET", "ui/api/admin/keypairs");
  $("keypairs").replaceChildren(...out.keypairs.map((kp) => h("tr", { "data-access-key": kp.access_key },
    h("td", { class: "mono" }, kp.access_key), h("td", {}, kp.user), h("td", {}, kp.admin ? "yes" : ""),
    h("td", {}, new Date(kp.created * 1000).toLocaleString()), h("td", {}, kp.revoked ? "revoked" : "active"),
    h("td", {}, kp.revoked ? "" : h("button", { type: "button", class: "danger", "aria-label": `Revoke ${kp.access_key}`,
      onclick: () => run(async () => { await api("DELETE", `ui/api/admin/keypairs/${kp.access_key}`); await loadKeyPairs(); }) }, "Revoke")))));
}
$("new-keypair").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  showError($("keypairs-error"), null);
  try {
    const kp = await api("POST", "ui/api/admin/keypairs", { json: { user: $("kp-user").value.trim(), admin: $("kp-admin").checked } });
    $("new-secret").hidden = false;
    $("new-secret").replaceChildren(h("p", {}, `Key pair for ${kp.user}: the secret key is shown this once.`),
      copyBox(`access key: ${kp.access_key}\nsecret key: ${kp.secret_key}`));
    $("kp-user").value = "";
    await loadKeyPairs();
  } catch (e) { showError($("keypairs-error"), e); }
});

// Times on the cards move on between pushes.
setInterval(() => { if (state.me && state.view === "mine" && !document.hidden) renderItems(); }, 15000);
start();
