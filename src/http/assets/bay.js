// The guest's bay page (reached by the QR code): this bay's live state and a form to be
// notified. The link token stays on this phone (localStorage) so the guest can cancel.
"use strict";

(function () {
  const app = document.getElementById("app");
  const L = {
    it: {
      nf_title: "Colonnina non trovata", nf_text: "Controlla il codice QR o chiedi al personale.",
      notify_title: "Avvisami", channel: "Come", address: "Indirizzo", language: "Lingua",
      submit: "Avvisami", sending: "Invio…", cancel: "Annulla l'avviso",
      promise_target: "Ti scriveremo quando la ricarica raggiunge il {t} %, se si interrompe prima, e se l'auto resta ferma dopo la ricarica.",
      promise_done: "Ti scriveremo quando la ricarica è completa, se si interrompe prima, e se l'auto resta ferma dopo la ricarica.",
      linked_bound: "Fatto: ti avviseremo per questa ricarica via {c}.",
      linked_pending: "Fatto: ti avviseremo per la prossima ricarica su questa colonnina via {c}.",
      cancelled: "Avviso annullato.", gone: "Avviso non più attivo.",
      failed: "Non è stato possibile registrare l'avviso: {e}",
      ph_email: "nome@esempio.it", ph_ntfy: "argomento ntfy (es. auto-mario-7f3)", ph_mqtt: "argomento (es. display-1)", ph_webhook: "https://…",
      privacy: "Usiamo il tuo contatto solo per questi avvisi e lo cancelliamo dopo la sosta.",
    },
    en: {
      nf_title: "Charger not found", nf_text: "Check the QR code or ask the staff.",
      notify_title: "Notify me", channel: "How", address: "Address", language: "Language",
      submit: "Notify me", sending: "Sending…", cancel: "Cancel the notification",
      promise_target: "We'll message you when it reaches {t} %, if it stops before, and if the car is left plugged in after charging.",
      promise_done: "We'll message you when charging is complete, if it stops before, and if the car is left plugged in after charging.",
      linked_bound: "Done: we'll notify you about this charge via {c}.",
      linked_pending: "Done: we'll notify you about the next charge on this bay via {c}.",
      cancelled: "Notification cancelled.", gone: "This notification is no longer active.",
      failed: "Could not set up the notification: {e}",
      ph_email: "name@example.com", ph_ntfy: "ntfy topic (e.g. car-mario-7f3)", ph_mqtt: "topic (e.g. display-1)", ph_webhook: "https://…",
      privacy: "We use your contact only for these messages and delete it after your visit.",
    },
  };
  const T = (k, v) => {
    let s = L[LANG][k] || L.it[k] || k;
    for (const [a, b] of Object.entries(v || {})) s = s.replace("{" + a + "}", b);
    return s;
  };
  const CHANNEL_NAMES = { email: "E-mail", ntfy: "ntfy", mqtt: "MQTT", webhook: "Webhook" };
  const INPUT_TYPE = { email: "email", webhook: "url" };

  if (PAGE.page !== "bay") {
    app.append(el("h1", {}, "404"), el("h2", {}, T("nf_title")), el("p", { class: "muted" }, T("nf_text")));
    return;
  }

  const otherLang = LANG === "it" ? "en" : "it";
  app.append(el("header", {},
    el("p", {}, PAGE.site_name),
    el("span", { class: "lang-switch" }, el("a", { href: "?lang=" + otherLang }, otherLang === "en" ? "English" : "Italiano"))));

  let state = { site: PAGE.site, charger: PAGE.charger, bay: PAGE.bay, online: false, status: null, session: null };
  const cardBox = el("div", {});
  app.append(cardBox);
  function renderCard() { cardBox.replaceChildren(bayCard(state)); }
  renderCard();

  // ---- notification form ----
  const storeKey = "evlounge:guest:" + PAGE.site + "/" + PAGE.charger;
  const panel = el("section", { class: "panel" });
  app.append(panel);

  function saved() {
    try { return JSON.parse(localStorage.getItem(storeKey) || "null"); } catch (_) { return null; }
  }

  function promise() {
    const target = state.target_soc_pct || (state.session && state.session.target_soc_pct);
    return target ? T("promise_target", { t: num(target) }) : T("promise_done");
  }

  function renderLinked(link, note) {
    fill(panel,
      el("h2", {}, T("notify_title")),
      note ? el("p", { class: "muted" }, note) : null,
      el("p", { class: "ok", "data-testid": "linked" },
        T(link.state === "pending" ? "linked_pending" : "linked_bound", { c: CHANNEL_NAMES[link.channel] || link.channel })),
      el("p", { class: "promise" }, promise()),
      el("button", { class: "secondary", type: "button", id: "cancel", onclick: cancel }, T("cancel")));
  }

  function renderForm(message, isError) {
    const channels = PAGE.channels || [];
    const first = channels[0] || "email";
    const address = el("input", { name: "address", id: "address", required: true, autocomplete: "email", type: INPUT_TYPE[first] || "text", placeholder: T("ph_" + first), maxlength: 320 });
    const seg = el("div", { class: "segmented", role: "radiogroup" },
      channels.map((c, i) => el("label", {},
        el("input", {
          type: "radio", name: "channel", value: c, checked: i === 0,
          onchange: () => {
            address.type = INPUT_TYPE[c] || "text";
            address.placeholder = T("ph_" + c);
            address.autocomplete = c === "email" ? "email" : "off";
          },
        }),
        CHANNEL_NAMES[c] || c)));
    const lang = el("select", { name: "lang", id: "lang" },
      el("option", { value: "it", selected: LANG === "it" }, "Italiano"),
      el("option", { value: "en", selected: LANG === "en" }, "English"));
    const button = el("button", { class: "primary", type: "submit", id: "submit" }, T("submit"));
    const form = el("form", { class: "notify", id: "notify", onsubmit: submit },
      el("label", {}, T("channel"), seg),
      el("label", {}, T("address"), address),
      el("label", {}, T("language"), lang),
      button);
    fill(panel,
      el("h2", {}, T("notify_title")),
      el("p", { class: "promise", "data-testid": "promise" }, promise()),
      message ? el("p", { class: isError ? "error" : "muted", role: isError ? "alert" : null }, message) : null,
      form,
      el("p", { class: "muted", style: "font-size:14px" }, T("privacy")));

    async function submit(ev) {
      ev.preventDefault();
      const data = new FormData(form);
      button.disabled = true;
      button.textContent = T("sending");
      const body = {
        site: PAGE.site, charger: PAGE.charger,
        channel: data.get("channel"), address: String(data.get("address") || "").trim(), lang: data.get("lang"),
      };
      try {
        const r = await fetch("/api/v1/guests", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-Evlounge-Public": "1" },
          body: JSON.stringify(body),
        });
        const j = await r.json().catch(() => ({}));
        if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
        const link = { token: j.token, state: j.state, channel: body.channel, created: Date.now() };
        localStorage.setItem(storeKey, JSON.stringify(link));
        renderLinked(link);
      } catch (e) {
        renderForm(T("failed", { e: e.message }), true);
      }
    }
  }

  async function cancel() {
    const link = saved();
    if (link && link.token) {
      try {
        await fetch("/api/v1/guests/" + encodeURIComponent(link.token), { method: "DELETE", headers: { "X-Evlounge-Public": "1" } });
      } catch (_) { /* removed locally all the same; retention deletes it server-side */ }
    }
    localStorage.removeItem(storeKey);
    renderForm(T("cancelled"));
  }

  async function restore() {
    const link = saved();
    if (!link || !link.token) return renderForm();
    renderLinked(link);
    try {
      const r = await fetch("/api/v1/guests/" + encodeURIComponent(link.token));
      if (r.status === 404) {
        localStorage.removeItem(storeKey);
        return renderForm(T("gone"));
      }
      const j = await r.json();
      const active = !j.state || ["pending", "bound", "active"].includes(j.state);
      if (!active) {
        localStorage.removeItem(storeKey);
        return renderForm(T("gone"));
      }
      link.state = j.state || link.state;
      renderLinked(link);
    } catch (_) { /* offline: keep showing what we know */ }
  }
  restore();

  // ---- live ----
  liveStream("site=" + encodeURIComponent(PAGE.site) + "&charger=" + encodeURIComponent(PAGE.charger), (kind, d) => {
    if (kind === "charger_state" && d.site === PAGE.site && d.charger === PAGE.charger) {
      state = d;
      renderCard();
      const p = panel.querySelector(".promise");
      if (p) p.textContent = promise();
    }
  });
  setInterval(renderCard, 30000);
})();
