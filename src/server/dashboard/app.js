// The agentrt dashboard: plain browser JavaScript, no build step. It uses the same HTTP API as any client:
// GET /agents and /memory for state, GET /events (read with fetch, so the bearer token can be sent) for
// live updates, POST /agents/<id>/messages with Accept: text/event-stream to talk to an agent.

const $ = (id) => document.getElementById(id);
const MAX_EVENTS = 100;
let token = localStorage.getItem("agentrt-token") ?? "";
let agents = [];
let memory;
let selected = "";
let turnAbort;

function headers(extra = {}) {
  return token ? { ...extra, authorization: `Bearer ${token}` } : extra;
}

async function api(path, init = {}) {
  const response = await fetch(path, { ...init, headers: headers(init.headers) });
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new Error("a bearer token is required");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
  }
  return response.status === 204 ? undefined : response.json();
}

function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "style") node.setAttribute("style", value);
    else if (key === "class") node.className = value;
    else node[key] = value;
  }
  node.append(...children.filter((child) => child !== undefined && child !== null));
  return node;
}

/** Reads an SSE response body and calls onEvent({ event, data, id }) per event. */
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  while (true) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = { event: "message", data: "", id: undefined };
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(text);
        else if (field === "event") event.event = text;
        else if (field === "id") event.id = text;
      }
      if (data.length === 0) continue;
      event.data = data.join("\n");
      onEvent(event);
    }
  }
}

function renderTotals() {
  if (!memory) return;
  const { model, totals } = memory;
  const capacity = model.bytes + Math.max(totals.cacheBytes, model.kvBytesPerToken * model.contextSize * Math.max(1, agents.length));
  $("bar-model").style.width = `${(100 * model.bytes) / capacity}%`;
  $("bar-kv").style.width = `${(100 * totals.cacheBytes) / capacity}%`;
  $("totals-text").textContent =
    `memory ${formatBytes(totals.memoryBytes)}: model ${formatBytes(model.bytes)} + KV reserved ${formatBytes(totals.cacheAllocatedBytes ?? totals.cacheBytes)} ` +
    `(${formatBytes(totals.cacheBytes)} held by ${totals.cacheTokens} tokens) · ${totals.residentAgents} resident, ${totals.storedAgents - totals.residentAgents} on disk only`;
  $("model").textContent = `${model.name} · ${model.engine} · ${model.contextSize} tokens/agent`;
}

function renderAgents() {
  const contextSize = memory?.model.contextSize ?? 1;
  const rows = agents.map((agent) => {
    const m = agent.memory ?? { cacheTokens: 0, cacheBytes: 0, savedTokens: 0, diskBytes: 0 };
    const state = agent.busy ? "busy" : agent.status;
    const tokens = agent.status === "resident" ? m.cacheTokens : m.savedTokens;
    const bar = el(
      "div",
      { class: "bar" },
      el("span", { class: `seg ${agent.status === "resident" ? "kv" : "disk"}`, style: `width:${Math.min(100, (100 * tokens) / contextSize)}%` }),
    );
    const label =
      agent.status === "resident"
        ? `${m.cacheTokens} / ${contextSize} tokens · ${formatBytes(m.cacheBytes)} in memory`
        : `${m.savedTokens} tokens saved · not in memory`;
    const last = agent.lastTurn
      ? `${agent.lastTurn.ttftMs.toFixed(1)} ms TTFT · ${agent.lastTurn.tokensPerSecond.toFixed(0)} tok/s · ${agent.lastTurn.reusedTokens} reused`
      : "–";
    const row = el(
      "tr",
      { class: agent.id === selected ? "selected" : "" },
      el("td", { class: "id" }, agent.id, el("span", { class: "role" }, agent.role)),
      el(
        "td",
        {},
        el("span", { class: `chip ${state}` }, state),
        agent.queued ? el("span", { class: "muted small" }, ` +${agent.queued} queued`) : undefined,
      ),
      el("td", { class: "cell-bar" }, bar, el("div", { class: "label" }, label)),
      el("td", {}, formatBytes(m.diskBytes)),
      el("td", {}, String(agent.turns)),
      el("td", { class: "last small muted" }, last),
    );
    row.addEventListener("click", () => select(agent.id));
    return row;
  });
  $("agents").replaceChildren(...rows);
  $("no-agents").hidden = agents.length > 0;
  $("agent-count").textContent = `${agents.length} (${agents.filter((a) => a.status === "resident").length} resident)`;
  const options = agents.map((agent) => el("option", { value: agent.id, selected: agent.id === selected }, agent.id));
  $("message-agent").replaceChildren(...options);
  if (!selected && agents[0]) select(agents[0].id);
}

function select(id) {
  const changed = selected !== id;
  selected = id;
  $("message-agent").value = id;
  for (const row of $("agents").children) row.classList.toggle("selected", row.firstChild.firstChild.textContent === id);
  if (changed) loadHistory(id);
}

// The selected agent's conversation, newest last, a page at a time (GET /agents/<id>/history).
let historyStart = 0;
function historyItem({ role, content }) {
  return el("li", { class: role }, el("span", { class: "who" }, role), content);
}
async function loadHistory(id, before) {
  try {
    const page = await api(`/agents/${id}/history?limit=20${before === undefined ? "" : `&before=${before}`}`);
    if (id !== selected) return;
    const items = page.messages.map(historyItem);
    if (before === undefined) $("history").replaceChildren(...items);
    else $("history").prepend(...items);
    historyStart = page.start;
    $("history-count").textContent = `${page.total} messages`;
    $("history-older").hidden = page.start === 0;
    if (before === undefined) $("history").scrollTop = $("history").scrollHeight;
  } catch (error) {
    $("history-count").textContent = String(error.message ?? error);
  }
}

function renderCluster(cluster) {
  $("cluster-panel").hidden = !cluster.enabled;
  if (!cluster.enabled) return;
  $("cluster-self").textContent = `this node: ${cluster.node}${cluster.draining ? " (draining)" : ""}`;
  const rows = cluster.nodes.map((node) => {
    const row = document.createElement("tr");
    const cells = [
      node.node + (node.node === cluster.node ? " (this)" : ""),
      `${node.resident ?? "?"} / ${node.maxAgents ?? "?"}`,
      String(node.owned ?? "?"),
      node.draining ? "draining" : "serving",
      new Date(node.startedAt).toLocaleTimeString(),
    ];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  $("cluster-nodes").replaceChildren(...rows);
}

async function refresh() {
  try {
    let cluster;
    [memory, { agents }, cluster] = await Promise.all([api("/memory"), api("/agents"), api("/cluster")]);
    renderTotals();
    renderAgents();
    renderCluster(cluster);
  } catch (error) {
    $("model").textContent = String(error.message ?? error);
  }
}

let refreshTimer;
function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(refresh, 150);
}

function describe(type, data) {
  switch (type) {
    case "agent:spawned":
      return `${data.id} (${data.role})`;
    case "agent:turn-start":
      return `${data.id} ← ${data.text}`;
    case "agent:token":
      return `${data.id} ${JSON.stringify(data.text)}`;
    case "agent:turn-end": {
      const reply = data.reply.trim().replace(/\s+/g, " ");
      return (
        `${data.id} → ${reply.length > 60 ? `${reply.slice(0, 60)}…` : reply} ` +
        `(${data.timings.evaluatedTokens} evaluated, ${data.timings.reusedTokens} reused, ${data.timings.stopReason})`
      );
    }
    case "agent:passivated":
      return `${data.id}: ${data.tokens} tokens → ${formatBytes(data.bytes)} on disk in ${data.ms.toFixed(1)} ms`;
    case "agent:rehydrated":
      return `${data.id}: ${data.tokens} tokens from ${data.source} in ${data.ms.toFixed(1)} ms`;
    case "agent:removed":
      return data.id;
    case "agent:error":
      return `${data.id ?? "runtime"}: ${data.error.code} ${data.error.message}`;
    case "worker:restarted":
      return `${data.reason} (${data.ms} ms)`;
    default:
      return JSON.stringify(data);
  }
}

function addEvent(type, data) {
  if (type === "agent:token" && !$("show-tokens").checked) return;
  const time = new Date(data.at ?? Date.now()).toLocaleTimeString();
  const item = el(
    "li",
    {},
    el("span", { class: "t" }, time),
    el("span", { class: `type ${type}` }, type),
    el("span", { class: "what", title: describe(type, data) }, describe(type, data)),
  );
  const list = $("events");
  list.prepend(item);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

async function subscribe() {
  while (true) {
    try {
      const response = await fetch("/events", { headers: headers({ accept: "text/event-stream" }) });
      if (response.status === 401) {
        $("token-form").hidden = false;
        return;
      }
      $("live").textContent = "● live";
      $("live").classList.add("on");
      await readEvents(response, ({ event, data }) => {
        const payload = JSON.parse(data);
        addEvent(event, payload);
        if (event !== "agent:token" && event !== "agent:turn-start") refreshSoon();
      });
    } catch {
      // The server went away or dropped us: show it and reconnect.
    }
    $("live").textContent = "● offline";
    $("live").classList.remove("on");
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function sendMessage(event) {
  event.preventDefault();
  const id = $("message-agent").value;
  const text = $("message-text").value;
  if (!id || !text.trim()) return;
  const reply = $("reply");
  reply.textContent = "";
  $("message-status").textContent = `sending to ${id}…`;
  $("send").disabled = true;
  $("stop").disabled = false;
  turnAbort = new AbortController();
  try {
    const response = await fetch(`/agents/${id}/messages`, {
      method: "POST",
      headers: headers({ "content-type": "application/json", accept: "text/event-stream" }),
      body: JSON.stringify({ text }),
      signal: turnAbort.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${response.status}`);
    }
    await readEvents(response, ({ event, data }) => {
      const payload = JSON.parse(data);
      if (event === "token") {
        reply.append(payload.text);
        reply.scrollTop = reply.scrollHeight;
      } else if (event === "done") {
        const t = payload.timings;
        reply.append(
          el(
            "span",
            { class: "meta" },
            `${t.generatedTokens} tokens · TTFT ${t.ttftMs.toFixed(1)} ms · ${t.tokensPerSecond.toFixed(0)} tok/s · ` +
              `${t.evaluatedTokens} evaluated, ${t.reusedTokens} reused from cache · ${t.stopReason}`,
          ),
        );
        reply.scrollTop = reply.scrollHeight;
        $("message-status").textContent = "done";
        loadHistory(id);
      } else if (event === "error") throw new Error(`${payload.error.code}: ${payload.error.message}`);
    });
  } catch (error) {
    $("message-status").textContent = error.name === "AbortError" ? "stopped" : String(error.message ?? error);
  } finally {
    $("send").disabled = false;
    $("stop").disabled = true;
  }
}

async function spawn(event) {
  event.preventDefault();
  const body = { id: $("spawn-id").value.trim(), systemPrompt: $("spawn-prompt").value };
  if ($("spawn-role").value.trim()) body.role = $("spawn-role").value.trim();
  try {
    await api("/agents", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    $("spawn-status").textContent = `created ${body.id}`;
    select(body.id);
    await refresh();
  } catch (error) {
    $("spawn-status").textContent = String(error.message ?? error);
  }
}

$("message-form").addEventListener("submit", sendMessage);
$("history-older").addEventListener("click", () => selected && loadHistory(selected, historyStart));
$("stop").addEventListener("click", () => turnAbort?.abort());
$("spawn-form").addEventListener("submit", spawn);
$("message-agent").addEventListener("change", (event) => select(event.target.value));
$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value;
  localStorage.setItem("agentrt-token", token);
  $("token-form").hidden = true;
  refresh();
  subscribe();
});

// A token in the URL fragment (#token=…) never reaches the server's logs; take it and forget the fragment.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.get("token")) {
  token = fragment.get("token");
  localStorage.setItem("agentrt-token", token);
  history.replaceState(null, "", location.pathname);
}

refresh();
subscribe();
setInterval(refresh, 5000);
