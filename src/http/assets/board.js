// The lounge board: every bay and every lounge zone, live from the event stream.
"use strict";

(function () {
  const siteFilter = PARAMS.get("site");
  const sites = (PAGE.sites || []).filter((s) => !siteFilter || s.id === siteFilter);
  const chargers = new Map(); // "site/charger" -> state
  const zones = new Map(); // "site/zone" -> state
  const order = []; // configured bays first, in config order
  for (const s of sites) {
    for (const c of s.chargers) {
      const key = s.id + "/" + c.charger;
      order.push(key);
      chargers.set(key, { site: s.id, charger: c.charger, bay: c.bay, online: false, status: null, session: null });
    }
    for (const z of s.zones) {
      zones.set(s.id + "/" + z.zone, { site: s.id, zone: z.zone, name: z.name, capacity: z.capacity, occupancy: null });
    }
  }

  const app = document.getElementById("app");
  const title = sites.length === 1 ? sites[0].name : "evlounge";
  const clock = el("div", { class: "clock" });
  const zoneBox = el("div", { class: "zones" });
  const bays = el("section", { class: "bays", "aria-live": "polite" });
  const link = el("span", {}, el("i", { class: "dot" }), t("reconnecting"));
  const updated = el("span", {});
  app.append(
    el("header", {}, el("h1", {}, title), zoneBox, clock),
    bays,
    el("footer", {}, link, updated));

  function tick() {
    clock.textContent = new Date().toLocaleTimeString(LANG === "it" ? "it-IT" : "en-GB", { hour: "2-digit", minute: "2-digit" });
  }
  tick();
  setInterval(tick, 5000);

  function renderZones() {
    zoneBox.replaceChildren();
    for (const z of zones.values()) {
      const occ = z.occupancy;
      const pct = z.capacity ? Math.min(100, (100 * (occ || 0)) / z.capacity) : 0;
      zoneBox.append(el("div", { class: "zone" + (z.full ? " full" : ""), "data-zone": z.zone },
        z.name || z.zone, " ",
        el("b", {}, occ === null || occ === undefined ? "—" : num(occ)),
        z.capacity ? " / " + num(z.capacity) + " " + t("seats") : "",
        z.full ? " · " + t("full") : "",
        z.capacity ? el("div", { class: "bar" }, el("i", { style: "width:" + pct + "%" })) : null));
    }
  }

  function renderBays() {
    const keys = order.concat([...chargers.keys()].filter((k) => !order.includes(k)).sort());
    bays.classList.toggle("many", keys.length > 6);
    bays.replaceChildren(...keys.map((k) => bayCard(chargers.get(k))));
    updated.textContent = new Date().toLocaleTimeString(LANG === "it" ? "it-IT" : "en-GB");
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; renderZones(); renderBays(); });
  }

  liveStream(siteFilter ? "site=" + encodeURIComponent(siteFilter) : "", (kind, d) => {
    if (kind === "charger_state") {
      if (siteFilter && d.site !== siteFilter) return;
      chargers.set(d.site + "/" + d.charger, d);
    } else if (kind === "lounge_state") {
      if (siteFilter && d.site !== siteFilter) return;
      const prev = zones.get(d.site + "/" + d.zone) || {};
      zones.set(d.site + "/" + d.zone, Object.assign({}, prev, d, { name: d.name || prev.name }));
    } else {
      return; // events also change the state, which arrives as charger_state
    }
    schedule();
  }, (up) => {
    link.replaceChildren(el("i", { class: "dot" + (up ? " on" : "") }), up ? t("live") : t("reconnecting"));
  });

  // "Ready since" and ETAs age without new messages.
  setInterval(schedule, 30000);
  renderZones();
  renderBays();
})();
