// The servicefactory dashboard: polls /api/status every second and draws the table; stop and
// restart ask for confirmation first. Every value is written with textContent (a service's name or
// log line can never become markup); the token lives in this tab's sessionStorage only.
"use strict";

const POLL_MS = 1000;
let token = null;
let selected = null;
let busy = {};

function takeToken() {
  const match = location.hash.match(/(?:^#|&)token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("servicefactory-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname);  // out of the address bar and the history
  }
  return sessionStorage.getItem("servicefactory-token");
}

async function api(path, body) {
  const options = { headers: { "Authorization": "Bearer " + token }, cache: "no-store" };
  if (body !== undefined) {
    options.method = "POST";
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch("/api/" + path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem("servicefactory-token");
    token = null;
    showTokenForm();
  }
  if (!response.ok) {
    throw new Error((data.error && data.error.message) || ("HTTP " + response.status));
  }
  return data;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function fixed(value, digits) { return value === null || value === undefined ? "-" : value.toFixed(digits); }

function memory(bytes) { return bytes === null || bytes === undefined ? "-" : (bytes / 1048576).toFixed(1) + "M"; }

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  seconds = Math.floor(seconds);
  if (seconds < 60) return seconds + "s";
  if (seconds < 3600) return Math.floor(seconds / 60) + "m" + String(seconds % 60).padStart(2, "0") + "s";
  if (seconds < 86400) return Math.floor(seconds / 3600) + "h" + String(Math.floor(seconds % 3600 / 60)).padStart(2, "0") + "m";
  return Math.floor(seconds / 86400) + "d" + String(Math.floor(seconds % 86400 / 3600)).padStart(2, "0") + "h";
}

function sparkline(values) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  const known = (values || []).map((v, i) => [i, v]).filter(([, v]) => v !== null && v !== undefined);
  const title = document.createElementNS(svgNS, "title");
  title.textContent = known.length ? "mean latency " + known[known.length - 1][1].toFixed(2) + " ms" : "no calls yet";
  svg.appendChild(title);
  if (known.length > 1) {
    const top = Math.max(...known.map(([, v]) => v)) || 1;
    const step = 120 / Math.max(1, values.length - 1);
    const line = document.createElementNS(svgNS, "polyline");
    line.setAttribute("points", known.map(([i, v]) => (i * step).toFixed(1) + "," + (22 - v / top * 20).toFixed(1)).join(" "));
    svg.appendChild(line);
  }
  return svg;
}

function confirmAction(action, name) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = (action === "stop" ? "Stop " : "Restart ") + name + "?";
  document.getElementById("confirm-ok").textContent = action === "stop" ? "Stop" : "Restart";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "cancel";
    dialog.showModal();
  });
}

async function act(action, name) {
  if (!(await confirmAction(action, name))) {
    say(action + " " + name + ": cancelled");
    return;
  }
  busy[name] = action;
  say(action + " " + name + "…");
  refresh();
  try {
    const outcome = await api(action, { name: name });
    say(outcome.message, !outcome.ok);
  } catch (error) {
    say(action + " " + name + ": " + error.message, true);
  } finally {
    delete busy[name];
    refresh();
  }
}

function say(text, isError) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
}

function row(service) {
  const tr = el("tr");
  tr.dataset.name = service.name;
  if (service.name === selected) tr.className = "selected";
  const name = el("td", null, "name");
  const link = el("button", service.name);
  link.title = "health and recent log lines";
  link.addEventListener("click", () => { selected = service.name; refresh(); });
  name.appendChild(link);
  tr.appendChild(name);
  const state = el("td");
  state.appendChild(el("span", service.state, "state " + service.state));
  tr.appendChild(state);
  tr.appendChild(el("td", service.pid || "-", "num pid"));
  tr.appendChild(el("td", fixed(service.cpu_percent, 1), "num"));
  tr.appendChild(el("td", memory(service.memory), "num"));
  tr.appendChild(el("td", fixed(service.calls_per_s, 1), "num calls"));
  tr.appendChild(el("td", fixed(service.errors_per_s, 1), "num"));
  tr.appendChild(el("td", service.restarts, "num restarts"));
  tr.appendChild(el("td", duration(service.uptime), "num"));
  const spark = el("td", null, "latency");
  spark.appendChild(sparkline(service.latency_history));
  if (service.latency_ms !== null && service.latency_ms !== undefined) {
    spark.appendChild(el("span", " " + service.latency_ms.toFixed(2) + " ms"));
  }
  tr.appendChild(spark);
  tr.appendChild(el("td", service.url || "-"));
  const actions = el("td", null, "actions");
  for (const action of ["restart", "stop"]) {
    const button = el("button", action === "stop" ? "Stop" : "Restart", action === "stop" ? "danger" : "");
    button.dataset.action = action;
    button.disabled = Boolean(busy[service.name]) || (action === "stop" && service.state === "stopped");
    button.addEventListener("click", () => act(action, service.name));
    actions.appendChild(button);
  }
  tr.appendChild(actions);
  return tr;
}

async function showDetails(services) {
  const box = document.getElementById("details");
  const service = services.find((s) => s.name === selected);
  if (!service) { box.hidden = true; return; }
  box.hidden = false;
  document.getElementById("details-name").textContent = service.name;
  const health = document.getElementById("health");
  health.replaceChildren();
  const answer = service.health || {};
  const facts = [["state", service.state], ["pid", service.pid || "-"], ["url", service.url || "-"],
    ["restarts", service.restarts], ["last exit", service.last_exit === null ? "-" : service.last_exit]];
  if (answer.unreachable) facts.push(["health", "no answer: " + answer.unreachable]);
  for (const key of ["iterations", "errors", "last_error", "last_good_iteration", "version"]) {
    if (key in answer) facts.push([key.replace(/_/g, " "), answer[key] === null ? "-" : answer[key]]);
  }
  if (answer.counters) facts.push(["calls (total)", answer.counters.calls]);
  for (const [key, value] of facts) { health.appendChild(el("dt", key)); health.appendChild(el("dd", value)); }
  try {
    const log = await api("log?name=" + encodeURIComponent(service.name) + "&lines=20");
    const pre = document.getElementById("log");
    const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
    pre.textContent = log.lines.join("\n") || "(empty)";
    if (atBottom) pre.scrollTop = pre.scrollHeight;  // the newest line stays in view, unless one scrolled up
  } catch (error) {
    document.getElementById("log").textContent = error.message;
  }
}

function showTokenForm() { document.getElementById("need-token").hidden = false; }

async function refresh() {
  if (!token) { showTokenForm(); return; }
  try {
    const data = await api("status");
    const services = data.services;
    document.querySelector("#services tbody").replaceChildren(...services.map(row));
    const running = services.filter((s) => s.state === "running").length;
    document.getElementById("summary").textContent = services.length + " services, " + running + " running";
    document.getElementById("where").textContent = data.where;
    document.getElementById("updated").textContent = "updated " + new Date(data.time * 1000).toLocaleTimeString();
    document.getElementById("empty").hidden = services.length > 0;
    document.body.dataset.loaded = "true";
    await showDetails(services);
  } catch (error) {
    document.getElementById("updated").textContent = "not updated: " + error.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  token = takeToken();
  document.getElementById("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = document.getElementById("token-input").value.trim();
    sessionStorage.setItem("servicefactory-token", token);
    document.getElementById("need-token").hidden = true;
    refresh();
  });
  refresh();
  setInterval(refresh, POLL_MS);
});
