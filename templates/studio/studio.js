// tracker studio: the one script of every page (served from /static; the CSP allows no other).
"use strict";
(function () {
  const meta = (n) => (document.querySelector(`meta[name="${n}"]`) || {}).content || "";
  const token = meta("tracker-token");
  const body = document.body;
  const page = body.dataset.page;
  const raterBox = document.getElementById("rater");
  raterBox.value = localStorage.getItem("tracker-rater") || meta("tracker-rater") || "";
  raterBox.addEventListener("change", () => localStorage.setItem("tracker-rater", raterBox.value.trim()));

  function toast(text, bad) {
    const t = document.getElementById("toast");
    t.textContent = text;
    t.className = bad ? "bad shown" : "shown";
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.className = ""; }, 2500);
  }

  async function rate(payload) {
    const rater = raterBox.value.trim();
    if (!rater) { toast("type your name in the rater box first", true); raterBox.focus(); return null; }
    const res = await fetch("/api/rate", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-Tracker-Token": token},
      body: JSON.stringify(Object.assign({rater: rater}, payload)),
    });
    const data = await res.json().catch(() => ({error: res.statusText}));
    if (!res.ok) { toast(data.error || "refused", true); return null; }
    return data;
  }

  // Auto-submitting selects (rows, columns, filters, metric).
  document.querySelectorAll("select.auto").forEach((s) => s.addEventListener("change", () => {
    const form = s.form;
    [...form.elements].forEach((e) => { if (e.name && !e.value) e.disabled = true; });
    form.submit();
  }));

  if (page === "grid") {
    const exp = body.dataset.experiment;
    const thumbs = () => [...document.querySelectorAll("figure.thumb")];
    const selected = [];
    const link = document.getElementById("compare-link");
    function select(fig) {
      const i = selected.indexOf(fig);
      if (i >= 0) { selected.splice(i, 1); fig.classList.remove("selected"); }
      else { selected.push(fig); fig.classList.add("selected"); if (selected.length > 2) selected.shift().classList.remove("selected"); }
      if (selected.length === 2) {
        const ref = (f) => encodeURIComponent(f.dataset.experiment + "/" + f.dataset.key);
        link.href = `/compare?a=${ref(selected[0])}&b=${ref(selected[1])}&mode=side`;
        link.classList.remove("hidden");
      } else link.classList.add("hidden");
    }
    document.getElementById("grid").addEventListener("click", (ev) => {
      const fig = ev.target.closest("figure.thumb");
      if (fig && !ev.target.closest("a")) { fig.focus(); select(fig); }
    });
    document.addEventListener("keydown", async (ev) => {
      const fig = document.activeElement && document.activeElement.closest && document.activeElement.closest("figure.thumb");
      if (!fig || ev.target === raterBox) return;
      const all = thumbs();
      const i = all.indexOf(fig);
      const move = {ArrowRight: 1, ArrowDown: 1, j: 1, ArrowLeft: -1, ArrowUp: -1, k: -1}[ev.key];
      if (move) { ev.preventDefault(); const next = all[i + move]; if (next) next.focus(); return; }
      if (ev.key === "c") { select(fig); return; }
      let payload = null;
      if ("12345".includes(ev.key) && ev.key.length === 1) payload = {kind: "score", value: Number(ev.key)};
      if (ev.key === "u") payload = {kind: "thumb", value: 1};
      if (ev.key === "d") payload = {kind: "thumb", value: 0};
      if (!payload) return;
      ev.preventDefault();
      if (!fig.classList.contains("done")) { toast("only a done image can be rated", true); return; }
      const ok = await rate(Object.assign({experiment: exp, key: fig.dataset.key}, payload));
      if (ok) {
        fig.classList.add("rated");
        fig.dataset.rated = `${payload.kind}:${payload.value}`;
        const badge = fig.querySelector(".badge");
        badge.textContent = payload.kind === "score" ? `★${payload.value} (you)` : (payload.value ? "👍 (you)" : "👎 (you)");
        toast(`${payload.kind} ${payload.value} saved`);
        const next = all[i + 1];
        if (next) next.focus();
      }
    });
    // Live: images appear as a sweep writes them.
    const strip = document.getElementById("live-strip");
    const source = new EventSource(`/events/${encodeURIComponent(exp)}`);
    const filters = JSON.parse(body.dataset.filters || "{}");
    source.addEventListener("hello", () => { body.dataset.live = "on"; });
    source.addEventListener("run", (ev) => {
      const d = JSON.parse(ev.data);
      const fig = document.querySelector(`figure.thumb[data-key="${CSS.escape(d.key)}"]`);
      if (fig) {
        const img = fig.querySelector("img");
        if (img.classList.contains("pending")) {
          img.src = d.src; img.classList.remove("pending"); fig.classList.remove("pending", "running");
          fig.classList.add("done", "arrived");
        }
      } else if (!d.initial && Object.entries(filters).every(([a, v]) => d.labels[a] === v)) {
        const img = document.createElement("img");
        img.src = d.src; img.alt = d.key; img.dataset.key = d.key;
        strip.prepend(img);
        document.getElementById("live").classList.add("shown");
      }
    });
  }

  async function judge(outcome, aKey, bKey, exp) {
    const ok = await rate({experiment: exp, key: aKey, other_key: bKey, kind: "pair", value: outcome});
    if (ok) { toast("judgement saved"); return true; }
    return false;
  }

  if (page === "compare") {
    const mode = body.dataset.mode;
    const blend = document.getElementById("blend");
    const top = document.getElementById("img-a");
    function apply() {
      if (!blend) return;
      const v = Number(blend.value);
      if (mode === "slider") top.style.clipPath = `inset(0 ${100 - v}% 0 0)`;
      if (mode === "fade") top.style.opacity = String(1 - v / 100);
    }
    if (blend) { blend.addEventListener("input", apply); apply(); }
    const axis = body.dataset.pairAxis;
    if (axis) {
      const go = async (o) => { if (await judge(o, body.dataset.aKey, body.dataset.bKey, body.dataset.aExp)) body.dataset.judged = String(o); };
      document.querySelectorAll("button.judge").forEach((b) => b.addEventListener("click", () => go(Number(b.dataset.outcome))));
      document.addEventListener("keydown", (ev) => {
        if (ev.target === raterBox) return;
        const o = {a: 1, t: 0.5, b: 0}[ev.key];
        if (o !== undefined) go(o);
      });
    }
  }

  if (page === "pairs" && body.dataset.aKey) {
    let busy = false;
    const go = async (o) => {
      if (busy) return; busy = true;
      if (await judge(o, body.dataset.aKey, body.dataset.bKey, body.dataset.experiment)) location.reload();
      else busy = false;
    };
    document.querySelectorAll("button.judge").forEach((b) => b.addEventListener("click", () => go(Number(b.dataset.outcome))));
    document.addEventListener("keydown", (ev) => {
      if (ev.target === raterBox) return;
      const o = {a: 1, ArrowLeft: 1, t: 0.5, b: 0, ArrowRight: 0}[ev.key];
      if (o !== undefined) { ev.preventDefault(); go(o); }
    });
  }
})();
