// Shared by the pages: page data, language, text, the bay card, and the live stream.
"use strict";

const PAGE = JSON.parse(document.getElementById("page-data").textContent || "{}");
const PARAMS = new URLSearchParams(location.search);
const LANG = PARAMS.get("lang") === "en" ? "en" : "it";
document.documentElement.lang = LANG;

const TEXT = {
  it: {
    available: "Libera", preparing: "Collegata", charging: "In carica",
    suspended_evse: "In attesa", suspended_ev: "In pausa", finishing: "In chiusura",
    reserved: "Riservata", unavailable: "Non disponibile", faulted: "Guasto",
    offline: "Non in linea", ready: "Pronta", unknown: "—",
    power: "Potenza", eta: "{t} % tra", energy: "Energia", ready_since: "Pronta da {m}",
    ready_big: "Ricarica completata", stopped: "Ricarica interrotta al {soc} %",
    free_bay: "Disponibile", out_faulted: "Fuori servizio", out_offline: "Nessun segnale", out_unavailable: "Fuori servizio", lounge: "Lounge", seats: "posti", full: "Completa",
    live: "In diretta", reconnecting: "Riconnessione…",
    min: "min", h: "h",
  },
  en: {
    available: "Available", preparing: "Plugged in", charging: "Charging",
    suspended_evse: "Waiting", suspended_ev: "Paused", finishing: "Finishing",
    reserved: "Reserved", unavailable: "Unavailable", faulted: "Fault",
    offline: "Offline", ready: "Ready", unknown: "—",
    power: "Power", eta: "{t} % in", energy: "Energy", ready_since: "Ready for {m}",
    ready_big: "Charging complete", stopped: "Charging stopped at {soc} %",
    free_bay: "Available", out_faulted: "Out of order", out_offline: "No signal", out_unavailable: "Out of service", lounge: "Lounge", seats: "seats", full: "Full",
    live: "Live", reconnecting: "Reconnecting…",
    min: "min", h: "h",
  },
};

function t(key, vars) {
  let s = (TEXT[LANG] && TEXT[LANG][key]) || TEXT.it[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", v);
  return s;
}

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "—";
  const m = Math.max(0, Math.round(s / 60));
  if (m < 60) return m + " " + t("min");
  return Math.floor(m / 60) + " " + t("h") + " " + String(m % 60).padStart(2, "0");
}

function num(v, digits) {
  if (v === null || v === undefined || !isFinite(v)) return "—";
  return Number(v).toLocaleString(LANG === "it" ? "it-IT" : "en-GB", {
    maximumFractionDigits: digits === undefined ? 0 : digits,
    minimumFractionDigits: digits === undefined ? 0 : digits,
  });
}

// What a guest should read from a charger's live state: one word (and a colour class).
function bayState(c) {
  if (!c) return "unknown";
  const s = c.session;
  const open = s && !s.ended;
  if (c.status === "faulted") return "faulted";
  if (!c.online) return "offline";
  if (open && s.completed) return "ready";
  return c.status || "unknown";
}

// A bay card. `c` is a charger state as /api/v1/chargers shows it (or a stub for a
// configured bay that never reported).
function bayCard(c) {
  const state = bayState(c);
  const s = c.session && !c.session.ended ? c.session : null;
  const soc = c.soc_pct;
  const target = c.target_soc_pct || (s && s.target_soc_pct);
  const card = el("article", {
    class: "card st-" + state,
    "data-site": c.site, "data-charger": c.charger, "data-state": state,
  });
  card.append(el("div", { class: "top" },
    el("span", { class: "bayname" }, c.bay || c.charger),
    el("span", { class: "pill", "data-testid": "status" }, t(state))));
  const main = el("div", { class: "body" });
  card.append(main);
  // The vehicle label, never the owner.
  if (s) main.append(el("div", { class: "vehicle" }, c.vehicle || s.vehicle || ""));
  else if (state === "available") main.append(el("div", { class: "vehicle muted" }, t("free_bay")));
  else if (["faulted", "offline", "unavailable"].includes(state)) main.append(el("div", { class: "vehicle muted" }, t("out_" + state)));
  if (s && soc !== null && soc !== undefined) {
    main.append(el("div", { class: "soc" },
      el("i", { style: "width:" + Math.max(0, Math.min(100, soc)) + "%" }),
      target ? el("b", { class: "target", style: "left:calc(" + Math.min(100, target) + "% - 2px)" }) : null,
      el("span", {}, num(soc) + " %")));
  }
  if (state === "ready") {
    const since = s.completed ? (Date.now() - Date.parse(s.completed)) / 1000 : null;
    main.append(el("div", { class: "big" }, t("ready_big")));
    if (since !== null && since > 60) main.append(el("div", { class: "facts" }, el("span", {}, t("ready_since", { m: fmtDuration(since) }))));
  } else if (s) {
    const fact = (label, value) => el("div", { class: "fact" }, el("span", {}, label), el("b", {}, value));
    const facts = el("div", { class: "facts" });
    facts.append(fact(t("power"), c.power_kw != null ? num(c.power_kw) + " kW" : "—"));
    if (c.eta_s != null && target) facts.append(fact(t("eta", { t: num(target) }), fmtDuration(c.eta_s)));
    if (s.energy_kwh) facts.append(fact(t("energy"), num(s.energy_kwh, 1) + " kWh"));
    main.append(facts);
  }
  return card;
}

// replaceChildren without the null/false placeholders of conditional content.
function fill(parent, ...kids) {
  parent.replaceChildren(...kids.flat().filter((k) => k !== null && k !== undefined && k !== false));
}

// The live stream: `onItem(kind, data, id)` for every event and state change. The browser
// reconnects by itself and resumes with Last-Event-ID; `onStatus(bool)` reports the link.
function liveStream(query, onItem, onStatus) {
  const url = "/api/v1/events" + (query ? "?" + query : "");
  const es = new EventSource(url);
  const kinds = ["charger_state", "lounge_state", "charging_started", "nearly_complete",
    "charging_complete", "idle_blocking", "charging_stopped", "charging_not_started",
    "charger_fault", "charger_offline", "charger_online", "lounge_full", "lounge_free"];
  for (const k of kinds) {
    es.addEventListener(k, (ev) => {
      let data = null;
      try { data = JSON.parse(ev.data); } catch (_) { return; }
      onItem(k, data, ev.lastEventId);
    });
  }
  es.onopen = () => onStatus && onStatus(true);
  es.onerror = () => onStatus && onStatus(false);
  return es;
}
