// The b2bua status page (docs/web.md). Reads GET /status/data every few seconds with the token
// the operator typed (kept in this tab's sessionStorage, sent as "Authorization: Bearer"), and
// acts through JSON-RPC (POST /rpc) with the same token. Every piece of text reaches the page as
// a text node (never as markup), and the page's Content-Security-Policy allows no inline script.
"use strict";

(() => {
  const TOKEN_KEY = "b2bua.token";
  const REFRESH_MS = 2000;
  const $ = (id) => document.getElementById(id);

  let timer = null;
  let loading = false;
  let again = false;
  let rpcId = 0;

  // -- the token: null = not signed in; "" = a listener without a token -----------------------

  const storedToken = () => sessionStorage.getItem(TOKEN_KEY);
  const authHeaders = () => {
    const token = storedToken();
    return token ? { Authorization: `Bearer ${token}` } : {};
  };

  function showLogin(error) {
    stop();
    sessionStorage.removeItem(TOKEN_KEY);
    for (const id of ["node", "node-state", "logout", "message"]) $(id).hidden = true;
    $("sets").replaceChildren();
    $("updated").textContent = "";
    $("login-error").textContent = error || "";
    $("login-error").hidden = !error;
    $("login").hidden = false;
    $("token").focus();
  }

  function signIn(event) {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("login").hidden = true;
    $("logout").hidden = false;
    refresh();
  }

  // -- small DOM helpers: text only -------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "text") node.textContent = String(value);
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function say(text, isError) {
    const box = $("message");
    box.textContent = text;
    box.classList.toggle("error", Boolean(isError));
    box.hidden = !text;
  }

  const number = (value) => (typeof value === "number" ? String(value) : "–");
  const ms = (value) => (typeof value === "number" && value > 0 ? `${value.toFixed(1)} ms` : "–");

  // -- polling ----------------------------------------------------------------------------------

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stop();
    if (storedToken() !== null) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function refresh() {
    if (storedToken() === null) return;
    if (loading) {
      again = true;
      return;
    }
    if (document.hidden) {
      schedule(); // nobody looks: ask again later
      return;
    }
    loading = true;
    try {
      const response = await fetch("/status/data", { headers: authHeaders(), cache: "no-store", credentials: "omit" });
      if (response.status === 401) {
        showLogin("The token was refused (HTTP 401).");
        return;
      }
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      render(await response.json());
      if ($("message").dataset.stale) say("");
    } catch (error) {
      $("message").dataset.stale = "1";
      say(`No answer from the b2bua (${error.message}); trying again.`, true);
      $("node-state").className = "badge stale";
    } finally {
      loading = false;
      if (again) {
        again = false;
        refresh();
      } else {
        schedule();
      }
    }
  }

  // -- actions: JSON-RPC with the token -----------------------------------------------------------

  async function rpc(method, params) {
    const response = await fetch("/rpc", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ jsonrpc: "2.0", id: ++rpcId, method, params }),
      cache: "no-store",
      credentials: "omit",
    });
    if (response.status === 401) throw new Error("the token may not act (HTTP 401): sign in with [control] token");
    let answer;
    try {
      answer = await response.json();
    } catch {
      throw new Error(`HTTP ${response.status}`);
    }
    if (answer.error) throw new Error(answer.error.message);
    return answer.result;
  }

  // a gateway's "enable" is dispatcher.undrain: active again, probing if keepalives run (ap or a)
  const ACTIONS = {
    enable: { label: "Enable", method: "dispatcher.undrain", state: null, style: "",
      ask: "Enable %s? New calls go to it again." },
    disable: { label: "Disable", method: "dispatcher.set_state", state: "d", style: "danger",
      ask: "Disable %s? It gets no new calls until enabled; calls in progress go on." },
    drain: { label: "Drain", method: "dispatcher.drain", state: null, style: "quiet",
      ask: "Drain %s? It gets no new calls; the log says when its last call ended." },
    undrain: { label: "Undrain", method: "dispatcher.undrain", state: null, style: "",
      ask: "End the drain of %s? New calls go to it again." },
    "node-drain": { label: "Drain node", method: "core.drain", state: null, style: "quiet",
      ask: "Drain this node? New calls and OPTIONS get 503; calls in progress go on." },
    "node-undrain": { label: "Undrain node", method: "core.undrain", state: null, style: "",
      ask: "End the drain of this node? It takes new calls again." },
  };

  // what an action's answer says: Kamailio's "Ok. ..." text, or a drain's calls still in progress
  function describe(result) {
    if (typeof result === "string") return result;
    if (result && typeof result.calls === "number" && "drained" in result) {
      return result.drained ? "Ok. No calls in progress." : `Ok. ${result.calls} call(s) still in progress.`;
    }
    if (result && typeof result.state === "string") return `Ok. The node is ${result.state}.`;
    return "Ok.";
  }

  async function act(event) {
    const button = event.currentTarget;
    const action = ACTIONS[button.dataset.action];
    const setid = button.dataset.set === undefined ? null : Number(button.dataset.set);
    const uri = button.dataset.uri;
    const target = uri === undefined ? "" : ` ${uri} (set ${setid})`;
    const what = target ? target.trim() : "this node";
    if (!window.confirm(action.ask.replace("%s", what))) return;
    let params = [];
    if (uri !== undefined) params = action.state ? [action.state, setid, uri] : [setid, uri];
    button.disabled = true;
    try {
      const result = await rpc(action.method, params);
      say(`${action.label}${target}: ${describe(result)}`);
    } catch (error) {
      say(`${action.label}${target} failed: ${error.message}`, true);
    } finally {
      delete $("message").dataset.stale;
      refresh();
    }
  }

  function actionButton(name, data) {
    const button = el("button", { type: "button", class: ACTIONS[name].style,
      data: { action: name, ...data } }, ACTIONS[name].label);
    button.addEventListener("click", act);
    return button;
  }

  // -- rendering --------------------------------------------------------------------------------

  function answers(data) {
    const byMethod = {};
    for (const item of Array.isArray(data.results) ? data.results : []) {
      const method = data.methods[item.id - 1];
      if (method) byMethod[method] = item;
    }
    return byMethod;
  }

  function render(data) {
    const got = answers(data);
    const admin = Boolean(data.admin);
    const when = new Date(data.time * 1000);
    $("updated").textContent = `updated ${when.toLocaleTimeString()}${admin ? "" : " · read-only"}`;
    renderNode(got["core.stats"], admin);
    renderSets(got["dispatcher.list"], got["dispatcher.stats"], admin);
  }

  function renderNode(answer, admin) {
    const badge = $("node-state");
    const facts = $("node-facts");
    const actions = $("node-actions");
    $("node").hidden = false;
    actions.replaceChildren();
    if (!answer || answer.error) {
      badge.hidden = true;
      facts.replaceChildren(el("div", {}, el("dt", {}, "Error"), el("dd", {}, answer ? answer.error.message : "no answer")));
      return;
    }
    const s = answer.result;
    badge.hidden = false;
    badge.textContent = s.state;
    badge.className = `badge node-${s.state}`;
    badge.dataset.state = s.state;
    const rows = [
      ["Active calls", `${number(s.calls.active)} / ${number(s.max_calls)}`],
      ["Received", number(s.calls.received)],
      ["Answered", number(s.calls.answered)],
      ["Failed", number(s.calls.failed)],
      ["Shed", number(s.calls.shed)],
      ["Call legs", `${number(s.legs.in_use)} / ${number(s.legs.slots)}`],
    ];
    facts.replaceChildren(...rows.map(([name, value]) => el("div", {}, el("dt", {}, name), el("dd", {}, value))));
    if (admin) actions.append(actionButton(s.state === "draining" ? "node-undrain" : "node-drain", {}));
  }

  function statsIndex(answer) {
    const index = new Map();
    if (answer && answer.result) {
      for (const set of answer.result.sets) {
        for (const dest of set.destinations) index.set(`${set.setid} ${dest.uri}`, dest);
      }
    }
    return index;
  }

  function stateClass(flags) {
    return { A: "up", T: "trying", I: "down", D: "off" }[flags.charAt(0)] || "off";
  }

  function actionsFor(flags, draining) {
    const state = flags.charAt(0);
    if (state === "A") return ["disable", "drain"];
    if (state === "D") return [draining ? "undrain" : "enable"];
    return ["enable", "disable"];
  }

  const COLUMNS = ["Gateway", "State", "Latency", "Calls", "Attempts", "Answered", "Failed", "Timeouts", "ASR"];

  function renderSets(listing, statistics, admin) {
    const root = $("sets");
    if (!listing) {
      root.replaceChildren();
      return;
    }
    if (listing.error) {
      root.replaceChildren(el("p", { class: "card muted" }, `Dispatcher: ${listing.error.message}`));
      return;
    }
    const stats = statsIndex(statistics);
    const cards = listing.result.RECORDS.map((record) => {
      const set = record.SET;
      const head = el("tr", {}, ...COLUMNS.map((name) => el("th", { scope: "col" }, name)),
        admin ? el("th", { scope: "col" }, "Actions") : null);
      const rows = set.TARGETS.map(({ DEST: dest }) => gatewayRow(set.ID, dest, stats.get(`${set.ID} ${dest.URI}`), admin));
      const up = set.TARGETS.filter(({ DEST: dest }) => dest.FLAGS.charAt(0) === "A").length;
      return el("section", { class: "card set", data: { set: set.ID } },
        el("h2", {}, `Set ${set.ID}`, el("span", { class: "muted" }, ` ${up} of ${set.TARGETS.length} up`)),
        el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows)));
    });
    root.replaceChildren(...cards);
  }

  function gatewayRow(setid, dest, s, admin) {
    const draining = Boolean(dest.RUNTIME && dest.RUNTIME.DRAINING);
    const latency = dest.LATENCY ? dest.LATENCY.EST || dest.LATENCY.AVG : s && s.keepalives.rtt_avg_ms;
    const timeouts = s ? s.timeouts.no_response + s.timeouts.no_answer : undefined;
    const attrs = dest.ATTRS && dest.ATTRS.BODY;
    const cell = (label, ...content) => el("td", { data: { label } }, ...content);
    const cells = [
      el("td", { class: "gateway", data: { label: "Gateway" } }, el("span", { class: "uri" }, dest.URI),
        attrs ? el("span", { class: "attrs" }, attrs) : null),
      cell("State", el("span", { class: `badge ${stateClass(dest.FLAGS)}` }, dest.FLAGS),
        draining ? el("span", { class: "badge draining" }, "draining") : null),
      cell("Latency", ms(latency)),
      cell("Calls", number(dest.RUNTIME && dest.RUNTIME.DLGLOAD)),
      cell("Attempts", number(s && s.attempts)),
      cell("Answered", number(s && s.answered)),
      cell("Failed", number(s && s.failed)),
      cell("Timeouts", number(timeouts)),
      cell("ASR", s && typeof s.asr === "number" ? `${Math.round(s.asr * 100)}%` : "–"),
    ];
    if (admin) {
      const data = { set: setid, uri: dest.URI };
      cells.push(el("td", { class: "actions", data: { label: "Actions" } },
        ...actionsFor(dest.FLAGS, draining).map((name) => actionButton(name, data))));
    }
    return el("tr", { class: stateClass(dest.FLAGS), data: { set: setid, uri: dest.URI, state: dest.FLAGS } },
      ...cells);
  }

  // -- start ------------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => showLogin(""));
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden) refresh();
    });
    if (storedToken() === null) {
      showLogin("");
    } else {
      $("logout").hidden = false;
      refresh();
    }
  });
})();
