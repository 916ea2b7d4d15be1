// The facilities dashboard: the daemon's own staff API drawn as inline SVG charts.
"use strict";

(function () {
  const app = document.getElementById("app");
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2", "#db2777", "#65a30d"];
  const DAY = 86400000;
  const locale = LANG === "it" ? "it-IT" : "en-GB";
  const S = {
    it: {
      title: "Cruscotto struttura", logout: "Esci", sessions30: "Sessioni (30 g)", energy30: "Energia erogata (30 g)",
      ttc: "Tempo medio di ricarica", idle30: "Minuti di sosta dopo la ricarica (30 g)", faults30: "Guasti (30 g)",
      delivered: "Notifiche consegnate", util: "Utilizzo per colonnina", today: "Oggi", d7: "7 giorni", d30: "30 giorni",
      util24: "Utilizzo nelle ultime 24 ore", energyDay: "Energia per giorno (kWh)", lounge: "Occupazione lounge (oggi)",
      notif: "Notifiche agli ospiti (30 g)", perCharger: "Per colonnina (30 g)", latest: "Ultime sessioni", csv: "Esporta CSV",
      charger: "Colonnina", sessions: "Sessioni", energy: "Energia kWh", avgttc: "Tempo medio", idle: "Sosta min", faults: "Guasti",
      started: "Inizio", vehicle: "Veicolo", outcome: "Esito", soc: "SoC", duration: "Durata", none: "Nessun dato nel periodo",
      loading: "Caricamento…", failed: "Errore nel caricare i dati",
    },
    en: {
      title: "Facilities dashboard", logout: "Sign out", sessions30: "Sessions (30 d)", energy30: "Energy delivered (30 d)",
      ttc: "Average time to complete", idle30: "Idle-blocking minutes (30 d)", faults30: "Faults (30 d)",
      delivered: "Notifications delivered", util: "Utilisation per charger", today: "Today", d7: "7 days", d30: "30 days",
      util24: "Utilisation, last 24 hours", energyDay: "Energy per day (kWh)", lounge: "Lounge occupancy (today)",
      notif: "Guest notifications (30 d)", perCharger: "Per charger (30 d)", latest: "Latest sessions", csv: "Export CSV",
      charger: "Charger", sessions: "Sessions", energy: "Energy kWh", avgttc: "Avg time", idle: "Idle min", faults: "Faults",
      started: "Started", vehicle: "Vehicle", outcome: "Outcome", soc: "SoC", duration: "Duration", none: "No data in this period",
      loading: "Loading…", failed: "Could not load the data",
    },
  };
  const T = (k) => S[LANG][k] || S.it[k] || k;

  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const c of children.flat()) if (c) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function legend(series) {
    return el("div", { class: "legend" }, series.map((s) => el("span", {}, el("i", { style: "background:" + s.color }), s.name)));
  }

  // Grouped vertical bars: labels along x, one bar per series in each group.
  function barChart(labels, series, opts) {
    const W = 640, H = 260, L = 44, B = 40, Tp = 12, R = 24;
    const max = opts.max || niceMax(Math.max(opts.integer ? 4 : 0, ...series.flatMap((s) => s.values)));
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "" });
    const ph = H - B - Tp, pw = W - L - R;
    for (let i = 0; i <= 4; i++) {
      const y = Tp + ph - (ph * i) / 4;
      g.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "axis" }));
      g.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, num((max * i) / 4, max < 4 ? 1 : 0) + (opts.unit || "")));
    }
    const gw = pw / Math.max(1, labels.length);
    const bw = Math.max(2, Math.min(28, (gw * 0.8) / series.length));
    labels.forEach((lab, i) => {
      const x0 = L + gw * i + (gw - bw * series.length) / 2;
      series.forEach((s, j) => {
        const v = s.values[i] || 0;
        const h = (ph * Math.min(v, max)) / max;
        g.append(svg("rect", { x: x0 + j * bw, y: Tp + ph - h, width: bw - 1, height: Math.max(0, h), fill: s.color, rx: 2 },
          svg("title", {}, `${lab} · ${s.name}: ${num(v, 1)}${opts.unit || ""}`)));
      });
      const every = Math.ceil(labels.length / 12);
      if (i % every === 0) g.append(svg("text", { x: L + gw * i + gw / 2, y: H - B + 16, "text-anchor": "middle" }, lab));
    });
    return g;
  }

  // Lines over time: series of [ms, value] points.
  function lineChart(series, opts) {
    const W = 640, H = 260, L = 44, B = 40, Tp = 12, R = 24;
    const pts = series.flatMap((s) => s.points);
    const x0 = opts.from, x1 = opts.to;
    const max = opts.max || niceMax(Math.max(0, ...pts.map((p) => p[1])));
    const g = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": opts.label || "" });
    const ph = H - B - Tp, pw = W - L - R;
    const X = (t) => L + (pw * (t - x0)) / Math.max(1, x1 - x0);
    const Y = (v) => Tp + ph - (ph * Math.min(v, max)) / max;
    for (let i = 0; i <= 4; i++) {
      const y = Tp + ph - (ph * i) / 4;
      g.append(svg("line", { x1: L, x2: W - R, y1: y, y2: y, class: "axis" }));
      g.append(svg("text", { x: L - 6, y: y + 4, "text-anchor": "end" }, num((max * i) / 4) + (opts.unit || "")));
    }
    for (let i = 0; i <= 6; i++) {
      const t = x0 + ((x1 - x0) * i) / 6;
      g.append(svg("text", { x: X(t), y: H - B + 16, "text-anchor": "middle" },
        new Date(t).toLocaleTimeString(locale, { hour: "2-digit", minute: "2-digit" })));
    }
    for (const s of series) {
      if (!s.points.length) continue;
      // Occupancy holds until the next sample: draw steps.
      let d = "";
      s.points.forEach(([t, v], i) => {
        const x = X(t).toFixed(1), y = Y(v).toFixed(1);
        if (i === 0) d += `M${x} ${y}`;
        else if (opts.step) d += `H${x}V${y}`;
        else d += `L${x} ${y}`;
      });
      if (opts.step) d += "H" + X(Math.min(x1, Date.now())).toFixed(1);
      g.append(svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2.5, "stroke-linejoin": "round" }));
    }
    return g;
  }

  function panel(title, ...content) {
    return el("section", { class: "panel chart" }, el("h2", {}, title), ...content);
  }

  function none() { return el("p", { class: "muted" }, T("none")); }

  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin" });
    if (r.status === 401) { location.reload(); throw new Error("401"); }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }

  const now = Date.now();
  const iso = (ms) => new Date(ms).toISOString();
  const logout = el("form", { method: "post", action: "/staff/logout" }, el("button", { class: "secondary", type: "submit" }, T("logout")));
  const other = LANG === "it" ? "en" : "it";
  app.append(el("header", {},
    el("h1", {}, T("title")),
    el("a", { class: "button", href: "/staff?lang=" + other }, other.toUpperCase()),
    el("a", { class: "button", href: "/" + (LANG === "en" ? "?lang=en" : "") }, "Board"),
    logout));
  const body = el("div", { style: "display:flex;flex-direction:column;gap:20px" }, el("p", { class: "muted" }, T("loading")));
  app.append(body);

  Promise.all([
    getJSON("/api/v1/stats/usage?bucket=day&from=" + iso(now - 29 * DAY)),
    getJSON("/api/v1/stats/usage?bucket=hour&from=" + iso(now - DAY)),
    getJSON("/api/v1/sessions?limit=10000&from=" + iso(now - 30 * DAY)),
    getJSON("/api/v1/stats/events?from=" + iso(now - 30 * DAY)),
    getJSON("/api/v1/stats/notifications?from=" + iso(now - 30 * DAY)),
    getJSON("/api/v1/stats/lounge?from=" + iso(new Date().setHours(0, 0, 0, 0))),
  ]).then(([u30, u24, sess, ev, notif, lounge]) => render(u30.buckets, u24.buckets, sess.sessions, ev.counts, notif, lounge.zones))
    .catch((e) => body.replaceChildren(el("p", { class: "error" }, T("failed") + ": " + e.message)));

  function groupBy(rows, key) {
    const m = new Map();
    for (const r of rows) {
      const k = key(r);
      if (!m.has(k)) m.set(k, []);
      m.get(k).push(r);
    }
    return m;
  }
  const mean = (a) => (a.length ? a.reduce((x, y) => x + y, 0) / a.length : 0);
  const sum = (a) => a.reduce((x, y) => x + y, 0);

  function bayName(site, charger) {
    for (const s of PAGE.sites || []) if (s.id === site) for (const c of s.chargers) if (c.charger === charger) return c.bay;
    return charger;
  }

  function render(u30, u24, sessions, events, notif, zones) {
    body.replaceChildren();
    const byCharger = groupBy(u30, (b) => b.site + "/" + b.charger);
    const keys = [...byCharger.keys()];
    const labels = keys.map((k) => bayName(...k.split("/")));
    const sessBy = groupBy(sessions, (s) => s.site + "/" + s.charger);
    const faults = new Map();
    for (const c of events) if (c.kind === "charger_fault") faults.set(c.site + "/" + c.subject, (faults.get(c.site + "/" + c.subject) || 0) + c.count);
    const ttcAll = sessions.map((s) => s.time_to_complete_s).filter((v) => v != null);
    const totals = notif.totals || {};
    const finished = (totals.delivered || 0) + (totals.failed || 0) + (totals.expired || 0);

    body.append(el("div", { class: "kpis" },
      kpi(num(sum(u30.map((b) => b.sessions))), T("sessions30"), "kpi-sessions"),
      kpi(num(sum(u30.map((b) => b.energy_kwh))) + " kWh", T("energy30"), "kpi-energy"),
      kpi(ttcAll.length ? fmtDuration(mean(ttcAll)) : "—", T("ttc"), "kpi-ttc"),
      kpi(num(sum(u30.map((b) => b.idle_min))), T("idle30"), "kpi-idle"),
      kpi(num(sum([...faults.values()])), T("faults30"), "kpi-faults"),
      kpi(finished ? num((100 * (totals.delivered || 0)) / finished) + " %" : "—", T("delivered"), "kpi-delivered")));

    // Utilisation today / 7 d / 30 d per charger.
    const utilSeries = [
      { name: T("today"), color: COLORS[0], values: keys.map((k) => { const b = byCharger.get(k); return b.length ? b[b.length - 1].utilization_pct : 0; }) },
      { name: T("d7"), color: COLORS[1], values: keys.map((k) => mean(byCharger.get(k).slice(-7).map((b) => b.utilization_pct))) },
      { name: T("d30"), color: COLORS[2], values: keys.map((k) => mean(byCharger.get(k).map((b) => b.utilization_pct))) },
    ];
    // Energy per day, all chargers together.
    const days = groupBy(u30, (b) => b.start.slice(0, 10));
    const dayLabels = [...days.keys()];
    const energy = [{ name: "kWh", color: COLORS[5], values: dayLabels.map((d) => sum(days.get(d).map((b) => b.energy_kwh))) }];
    body.append(el("div", { class: "grid2" },
      panel(T("util"), keys.length ? barChart(labels, utilSeries, { unit: "%", label: T("util") }) : none(), legend(utilSeries)),
      panel(T("energyDay"), dayLabels.length ? barChart(dayLabels.map((d) => d.slice(8, 10) + "/" + d.slice(5, 7)), energy, { label: T("energyDay") }) : none())));

    // Last 24 h by hour, one line per charger.
    const by24 = groupBy(u24, (b) => b.site + "/" + b.charger);
    const lines = [...by24.entries()].map(([k, rows], i) => ({
      name: bayName(...k.split("/")), color: COLORS[i % COLORS.length],
      points: rows.map((b) => [Date.parse(b.start), b.utilization_pct]),
    }));
    const zoneLines = (zones || []).map((z, i) => ({
      name: z.zone + (z.capacity ? " (" + z.capacity + ")" : ""), color: COLORS[(i + 3) % COLORS.length],
      points: z.samples.map((s) => [Date.parse(s.ts), s.occupancy]),
      capacity: z.capacity,
    }));
    const midnight = new Date().setHours(0, 0, 0, 0);
    const zmax = Math.max(1, ...zoneLines.map((z) => z.capacity || 0), ...zoneLines.flatMap((z) => z.points.map((p) => p[1])));
    body.append(el("div", { class: "grid2" },
      panel(T("util24"), lines.length ? lineChart(lines, { from: now - DAY, to: now, max: 100, unit: "%", label: T("util24") }) : none(), legend(lines)),
      panel(T("lounge"), zoneLines.some((z) => z.points.length) ? lineChart(zoneLines, { from: midnight, to: midnight + DAY, max: niceMax(zmax), step: true, label: T("lounge") }) : none(), legend(zoneLines))));

    // Notifications by outcome.
    const outcomes = ["delivered", "pending", "failed", "expired"];
    const chans = [...new Set((notif.counts || []).map((c) => c.channel))];
    const nseries = outcomes.map((o, i) => ({
      name: o, color: ["#16a34a", "#94a3b8", "#dc2626", "#f59e0b"][i],
      values: chans.map((ch) => sum((notif.counts || []).filter((c) => c.channel === ch && c.outcome === o).map((c) => c.count))),
    }));
    const table = el("table", { class: "data", id: "per-charger" },
      el("thead", {}, el("tr", {}, [T("charger"), T("sessions"), T("energy"), T("avgttc"), T("idle"), T("faults")].map((h, i) => el("th", { class: i ? "num" : "" }, h)))),
      el("tbody", {}, keys.map((k) => {
        const rows = byCharger.get(k);
        const ttc = (sessBy.get(k) || []).map((s) => s.time_to_complete_s).filter((v) => v != null);
        return el("tr", {},
          el("td", {}, bayName(...k.split("/"))),
          el("td", { class: "num" }, num(sum(rows.map((b) => b.sessions)))),
          el("td", { class: "num" }, num(sum(rows.map((b) => b.energy_kwh)), 1)),
          el("td", { class: "num" }, ttc.length ? fmtDuration(mean(ttc)) : "—"),
          el("td", { class: "num" }, num(sum(rows.map((b) => b.idle_min)))),
          el("td", { class: "num" }, num(faults.get(k) || 0)));
      })));
    body.append(el("div", { class: "grid2" },
      panel(T("perCharger"), table),
      panel(T("notif"), chans.length ? barChart(chans, nseries, { label: T("notif"), integer: true }) : none(), legend(nseries))));

    const latest = sessions.slice(0, 50);
    const dt = (s) => (s ? new Date(s).toLocaleString(locale, { day: "2-digit", month: "2-digit", hour: "2-digit", minute: "2-digit" }) : "—");
    body.append(panel(T("latest"),
      el("p", {}, el("a", { class: "button", href: "/api/v1/sessions?format=csv&limit=10000", download: "sessions.csv" }, T("csv"))),
      latest.length ? el("div", { style: "overflow-x:auto" }, el("table", { class: "data", id: "sessions" },
        el("thead", {}, el("tr", {}, [T("started"), T("charger"), T("vehicle"), T("outcome"), T("energy"), T("soc"), T("duration")].map((h) => el("th", {}, h)))),
        el("tbody", {}, latest.map((s) => el("tr", {},
          el("td", {}, dt(s.started)),
          el("td", {}, bayName(s.site, s.charger)),
          el("td", {}, s.vehicle || "—"),
          el("td", {}, s.outcome || "…"),
          el("td", { class: "num" }, num(s.energy_kwh, 1)),
          el("td", {}, (s.soc_start != null ? num(s.soc_start) : "—") + " → " + (s.soc_end != null ? num(s.soc_end) : "—")),
          el("td", {}, s.ended ? fmtDuration((Date.parse(s.ended) - Date.parse(s.started)) / 1000) : "…")))))) : none()));
  }

  function kpi(value, label, id) {
    return el("div", { class: "kpi", id }, el("b", {}, value), el("span", {}, label));
  }
})();
