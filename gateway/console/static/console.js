/* flgate console: the browser side.
 *
 * One page, hash routes (#/federation, #/jobs, #/job/ID, #/submit), no build step.
 * Data comes from the console server's JSON API and its Server-Sent Events streams; the
 * ids and data attributes used here are the contract with the server and the browser test
 * (see the console contract), so keep them stable.
 *
 * Everything the server sends (job names, logs, errors...) is put in with textContent.
 */
"use strict";

(() => {
  const TOKEN = document.querySelector('meta[name="flgate-token"]')?.content || "";
  const ANSI = /\x1b\[[0-9;?]*[ -\/]*[@-~]/g; // terminal escape sequences (colours)
  const ACTIVE_STATES = new Set(["submitted", "dispatched", "running"]);
  const PALETTE = ["#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#475569", "#b45309"];

  // ---------------------------------------------------------------- small helpers

  const $ = (sel, root = document) => root.querySelector(sel);

  /** Build an element. attrs: class, text, dataset {k: v}, on {event: fn}, anything else is
   *  set as an attribute (false/null/undefined skip it). Children: nodes or strings. */
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else node.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  /** Set textContent only when it changed (keeps the DOM quiet on frequent updates). */
  function setText(node, text) {
    text = text === null || text === undefined ? "" : String(text);
    if (node && node.textContent !== text) node.textContent = text;
  }

  const pad2 = (n) => String(n).padStart(2, "0");

  function fmtTime(ts) {
    if (ts === null || ts === undefined) return "";
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
      `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  function fmtAgo(ts) {
    if (ts === null || ts === undefined) return "never";
    const s = Math.max(0, Math.round(Date.now() / 1000 - ts));
    if (s < 120) return `${s} s ago`;
    if (s < 7200) return `${Math.floor(s / 60)} min ago`;
    if (s < 172800) return `${Math.floor(s / 3600)} h ago`;
    return fmtTime(ts);
  }

  function fmtDuration(sec) {
    if (sec === null || sec === undefined || !isFinite(sec)) return "";
    const s = Math.max(0, Math.round(sec));
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${pad2(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${pad2(Math.floor((s % 3600) / 60))} min`;
  }

  function progressText(job) {
    if (job.rounds > 0) return `round ${job.round} of ${job.rounds}`;
    if (job.round > 0) return `round ${job.round}`;
    return job.ended ? "" : "starting";
  }

  /** A <progress> shows value=round, max=rounds; indeterminate while the rounds are unknown. */
  function fillProgress(bar, job) {
    if (job.rounds > 0) {
      bar.max = job.rounds;
      bar.value = Math.min(job.round, job.rounds);
    } else if (job.ended) {
      bar.max = Math.max(job.round, 1);
      bar.value = job.round;
    } else {
      bar.removeAttribute("value");
    }
  }

  /** Make `cell` hold exactly one badge span with this class and text. */
  function badgeIn(cell, cls, text) {
    let b = cell.firstElementChild;
    if (!b || cell.childNodes.length !== 1) cell.replaceChildren((b = el("span")));
    b.className = `badge ${cls}`;
    setText(b, text);
  }

  function setBadge(node, state) {
    node.className = node.className.replace(/\bstate-\S+/g, "").trim() + ` state-${state}`;
    setText(node, state);
  }

  // ---------------------------------------------------------------- HTTP

  async function parseBody(resp) {
    const text = await resp.text();
    try { return JSON.parse(text); } catch (_) { return text; }
  }

  /** GET JSON; throws an Error carrying the server's `error` text. */
  async function getJSON(url) {
    const resp = await fetch(url, { headers: { Accept: "application/json" } });
    const body = await parseBody(resp);
    if (!resp.ok) {
      const err = new Error((body && body.error) || `HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return body;
  }

  /** POST JSON with the token header; resolves to {status, body} whatever the status. */
  async function post(url, data = {}) {
    const resp = await fetch(url, {
      method: "POST",
      headers: { "X-Flgate-Token": TOKEN, "Content-Type": "application/json",
        Accept: "application/json" },
      body: JSON.stringify(data),
    });
    return { status: resp.status, body: await parseBody(resp) };
  }

  const errorText = (res) =>
    (res.body && typeof res.body === "object" && res.body.error) ||
    (typeof res.body === "string" && res.body.trim()) || `HTTP ${res.status}`;

  window.flgateConsole = { forcePost: (url) => post(url, {}) };

  // ---------------------------------------------------------------- banner

  // Two independent reasons to show #relay-banner: the relay said it is unreachable (a
  // `relay` event), or the stream to the console server itself broke.
  const health = { relayError: null, consoleDown: false };

  function renderBanner() {
    const b = $("#relay-banner");
    // What the page shows is stale while either is down: the stylesheet dims it.
    document.body.classList.toggle("stale", health.consoleDown || health.relayError !== null);
    if (health.consoleDown) {
      setText(b, "console unreachable: the flgate console server does not answer; retrying\u2026");
      b.hidden = false;
    } else if (health.relayError !== null) {
      setText(b, `relay unreachable: ${health.relayError || "no answer"} (retrying\u2026)`);
      b.hidden = false;
    } else {
      b.hidden = true;
    }
  }

  function onRelay(data) {
    health.relayError = data.reachable ? null : String(data.error || "");
    renderBanner();
  }

  function setConsoleDown(down) {
    if (health.consoleDown === down) return;
    health.consoleDown = down;
    renderBanner();
  }

  // ---------------------------------------------------------------- live streams

  /** An EventSource that belongs to the current page. Handlers get parsed JSON. EventSource
   *  retries by itself after a network error; when the server answered with an error status it
   *  gives up (readyState CLOSED), so we open a fresh one after a pause (onRestart lets the
   *  caller reset state that the lost Last-Event-ID would otherwise duplicate). */
  class LiveStream {
    constructor(url, handlers, onRestart = null) {
      this.url = url;
      this.handlers = { relay: onRelay, refused: (d) => setNotice(d.error), ...handlers };
      this.onRestart = onRestart;
      this.closed = false;
      this.downTimer = null;
      this.retryTimer = null;
      this.connect();
    }

    connect() {
      const es = (this.es = new EventSource(this.url));
      es.addEventListener("open", () => this.up());
      es.addEventListener("error", (ev) => {
        if (this.closed) return;
        if (ev.data !== undefined) {
          // A server-sent `event: error` (the relay refused something), not a lost connection.
          this.up();
          if (this.handlers.refused) {
            try { this.handlers.refused(JSON.parse(ev.data)); } catch (_) { /* ignore */ }
          }
          return;
        }
        // Show the banner only if the outage lasts: a plain reconnect is not worth a flash.
        if (!this.downTimer) this.downTimer = setTimeout(() => setConsoleDown(true), 1500);
        if (es.readyState === EventSource.CLOSED && !this.retryTimer) {
          this.retryTimer = setTimeout(() => {
            this.retryTimer = null;
            if (this.closed) return;
            if (this.onRestart) this.onRestart();
            this.connect();
          }, 3000);
        }
      });
      for (const [name, fn] of Object.entries(this.handlers)) {
        es.addEventListener(name, (ev) => {
          this.up(name !== "relay" && name !== "refused");
          let data;
          try { data = JSON.parse(ev.data); } catch (_) { return; }
          fn(data, ev);
        });
      }
    }

    /** The console answered; `data` when it carried relay data, which proves the relay up. */
    up(data = false) {
      clearTimeout(this.downTimer);
      this.downTimer = null;
      const relayBack = data && health.relayError !== null;
      if (relayBack) health.relayError = null;
      if (data) setNotice("");
      if (health.consoleDown || relayBack) {
        health.consoleDown = false;
        renderBanner();
      }
    }

    close() {
      this.closed = true;
      clearTimeout(this.downTimer);
      clearTimeout(this.retryTimer);
      if (this.es) this.es.close();
    }
  }

  // ---------------------------------------------------------------- page lifecycle

  // What the current page opened; leavePage() tears it all down.
  let page = { gen: 0, streams: [], timers: [], charts: [] };

  function leavePage() {
    page.streams.forEach((s) => s.close());
    page.timers.forEach((t) => clearInterval(t));
    page.charts.forEach((c) => c.destroy());
    page = { gen: page.gen + 1, streams: [], timers: [], charts: [] };
    setConsoleDown(false);
  }

  function stream(url, handlers, onRestart) {
    const s = new LiveStream(url, handlers, onRestart);
    page.streams.push(s);
    return s;
  }

  function every(ms, fn) {
    page.timers.push(setInterval(fn, ms));
  }

  /** A callback that does nothing once the page that created it is gone. */
  function guard(fn) {
    const gen = page.gen;
    return (...args) => (gen === page.gen ? fn(...args) : undefined);
  }

  /** A page-level line for what the relay refused to a stream (e.g. "no such job"). */
  function setNotice(text) {
    const n = $("#page-notice");
    if (n) setText(n, text || "");
  }

  // ---------------------------------------------------------------- tables

  function makeTable(id, columns) {
    // columns: [[cssClass, header], ...]
    return el("table", { id, class: "grid" },
      el("thead", {}, el("tr", {}, ...columns.map(([c, h]) => el("th", { class: c, text: h })))),
      el("tbody"));
  }

  /** Update tbody rows in place, keyed by a data attribute: existing rows are refilled and
   *  reordered, new ones created, missing ones removed (rows survive across updates, so a
   *  reader holding one sees it change). */
  function syncRows(tbody, items, key, dataKey, columns, fill) {
    const old = new Map([...tbody.rows].map((r) => [r.dataset[dataKey], r]));
    items.forEach((item, i) => {
      const k = String(key(item));
      let row = old.get(k);
      if (row) old.delete(k);
      else {
        row = el("tr", { dataset: { [dataKey]: k } }, ...columns.map(([c]) => el("td", { class: c })));
      }
      fill(row, item);
      if (tbody.rows[i] !== row) tbody.insertBefore(row, tbody.rows[i] || null);
    });
    old.forEach((r) => r.remove());
  }

  // ---------------------------------------------------------------- federation page

  const SITE_COLUMNS = [["name", "Site"], ["online", "Status"], ["last-seen", "Last seen"],
    ["transport", "Transport"], ["flower", "Flower"], ["rtt", "RTT"], ["calls", "Calls / min"],
    ["errors", "Errors / min"], ["jobs", "Jobs"]];

  function federationPage(main) {
    const relayName = el("dd", { id: "relay-name" });
    const relayUrl = el("dd", { id: "relay-url" });
    const info = el("dl", { class: "facts" }, el("dt", { text: "Name" }), relayName,
      el("dt", { text: "URL" }), relayUrl);
    const listeners = el("ul", { id: "relay-listeners", class: "plain" });
    const table = makeTable("sites", SITE_COLUMNS);
    const empty = el("p", { class: "muted", text: "Waiting for the relay\u2026" });
    main.append(el("h1", { text: "Federation" }),
      el("section", { class: "card" }, el("h2", { text: "Relay" }), info,
        el("h3", { text: "Listeners" }), listeners),
      el("section", { class: "card" }, el("h2", { text: "Sites" }), table, empty));

    let latest = null;
    const render = guard((fed) => {
      latest = fed;
      const relay = fed.relay || {};
      setText(relayName, relay.name);
      setText(relayUrl, relay.url);
      const urls = relay.listeners || [];
      if ([...listeners.children].map((li) => li.textContent).join("\n") !== urls.join("\n")) {
        listeners.replaceChildren(...urls.map((u) => el("li", { text: u })));
      }
      const sites = fed.sites || [];
      empty.hidden = sites.length > 0;
      setText(empty, "No sites known yet.");
      syncRows(table.tBodies[0], sites, (s) => s.name, "site", SITE_COLUMNS, fillSiteRow);
    });

    stream("/api/events", { federation: render });
    // Redraw every second from the latest data: "12 s ago" keeps counting between updates.
    every(1000, () => latest && render(latest));
  }

  function fillSiteRow(row, s) {
    const cell = (c) => row.querySelector(`.${c}`);
    setText(cell("name"), s.name);
    const status = s.online ? "online" : "offline";
    badgeIn(cell("online"), `state-${status}`, status);
    setText(cell("last-seen"), fmtAgo(s.last_seen));
    setText(cell("transport"), s.transport);
    setText(cell("flower"), (s.flower_versions || []).join(", "));
    setText(cell("rtt"), s.rtt_ms === null || s.rtt_ms === undefined ? "\u2013" :
      `${Number(s.rtt_ms).toFixed(1)} ms`);
    setText(cell("calls"), s.calls_last_minute);
    setText(cell("errors"), s.errors_last_minute);
    cell("errors").classList.toggle("bad", s.errors_last_minute > 0);
    const jobs = s.jobs || [];
    const jobsCell = cell("jobs");
    if (jobsCell.dataset.ids !== jobs.join(" ")) {
      jobsCell.dataset.ids = jobs.join(" ");
      const links = [];
      jobs.forEach((id, i) => {
        if (i) links.push(", ");
        links.push(el("a", { href: `#/job/${encodeURIComponent(id)}`, text: id }));
      });
      jobsCell.replaceChildren(...links);
    }
  }

  // ---------------------------------------------------------------- jobs page

  const JOB_COLUMNS = [["name", "Job"], ["state", "State"], ["progress", "Progress"],
    ["sites", "Sites"], ["submitted-by", "Submitted by"], ["submitted", "Submitted"],
    ["duration", "Duration"]];
  const FILTERS = {
    all: () => true,
    active: (j) => ACTIVE_STATES.has(j.state),
    finished: (j) => j.state === "finished",
    failed: (j) => j.state === "failed",
    aborted: (j) => j.state === "aborted",
  };
  let jobFilter = "all"; // survives leaving and re-entering the page

  function jobsPage(main) {
    const select = el("select", { id: "job-filter" },
      ...Object.keys(FILTERS).map((f) => el("option", { value: f, text: f })));
    select.value = jobFilter;
    const table = makeTable("jobs", JOB_COLUMNS);
    const empty = el("p", { class: "muted", text: "Waiting for the relay\u2026" });
    main.append(
      el("div", { class: "page-head" }, el("h1", { text: "Jobs" }),
        el("label", { class: "filter" }, "Show ", select)),
      el("section", { class: "card" }, table, empty));

    let latest = null;
    const render = guard((data) => {
      latest = data;
      const jobs = (data.jobs || []).filter(FILTERS[jobFilter] || FILTERS.all);
      empty.hidden = jobs.length > 0;
      setText(empty, (data.jobs || []).length ? "No jobs match this filter." : "No jobs yet.");
      syncRows(table.tBodies[0], jobs, (j) => j.job_id, "job", JOB_COLUMNS, fillJobRow);
    });
    select.addEventListener("change", () => {
      jobFilter = select.value;
      if (latest) render(latest);
    });

    stream("/api/events", { jobs: render });
  }

  function fillJobRow(row, j) {
    const cell = (c) => row.querySelector(`.${c}`);
    const name = cell("name");
    if (!name.querySelector("a")) {
      name.replaceChildren(el("a", { href: `#/job/${encodeURIComponent(j.job_id)}`, title: j.job_id }));
    }
    setText(name.querySelector("a"), j.name || j.job_id);
    badgeIn(cell("state"), `state-${j.state}`, j.state);
    cell("state").title = j.reason || "";
    const prog = cell("progress");
    if (!prog.querySelector("progress")) {
      prog.replaceChildren(el("progress"), el("span", { class: "progress-text" }));
    }
    fillProgress(prog.querySelector("progress"), j);
    setText(prog.querySelector(".progress-text"), progressText(j));
    setText(cell("sites"), (j.sites || []).join(", "));
    setText(cell("submitted-by"), j.submitted_by);
    setText(cell("submitted"), fmtTime(j.created));
    setText(cell("duration"), fmtDuration(j.duration_s));
  }

  // ---------------------------------------------------------------- job page

  // Colours follow the site, not the dataset's position, so one site looks the same in every chart.
  const siteColours = new Map();
  function colourFor(name) {
    if (!siteColours.has(name)) siteColours.set(name, PALETTE[siteColours.size % PALETTE.length]);
    return siteColours.get(name);
  }

  /** A Chart.js line chart for one metric tag: x = round on a linear axis, points {x, y}, so
   *  each dataset (site) keeps exactly its own rounds. */
  function newChart(container, key, title, legend) {
    const canvas = el("canvas", { dataset: { chart: key } });
    container.append(el("figure", { class: "chart" }, el("figcaption", { text: title }),
      el("div", { class: "chart-box" }, canvas)));
    const chart = new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [] },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "nearest", axis: "x", intersect: false },
        scales: {
          x: { type: "linear", bounds: "data", title: { display: true, text: "round" },
            ticks: { precision: 0 } },
        },
        plugins: { legend: { display: legend, position: "bottom", labels: { boxWidth: 12 } } },
      },
    });
    page.charts.push(chart);
    return chart;
  }

  /** Put series {label: [[step, value], ...]} into a chart in place: one dataset per label,
   *  created when the label first appears, its points replaced (in round order). */
  function setSeries(chart, series, colour) {
    for (const [name, pts] of Object.entries(series)) {
      let ds = chart.data.datasets.find((d) => d.label === name);
      if (!ds) {
        const c = colour(name);
        ds = { label: name, data: [], borderColor: c, backgroundColor: c, borderWidth: 2,
          pointRadius: 2, tension: 0 };
        chart.data.datasets.push(ds);
      }
      ds.data = pts.map(([x, y]) => ({ x, y })).sort((a, b) => a.x - b.x);
      ds.pointRadius = ds.data.length > 60 ? 0 : 2; // dots only while they are not a blur
    }
    chart.update("none");
  }

  function jobPage(main, jobId) {
    const enc = encodeURIComponent(jobId);
    const apiBase = `/api/jobs/${enc}`;
    const f = (id, tag = "dd") => el(tag, { id });
    const progress = el("progress", { id: "job-progress" });
    const serverCharts = el("div", { id: "server-charts", class: "charts" });
    const siteCharts = el("div", { id: "site-charts", class: "charts" });
    const sourceButtons = el("div", { id: "log-sources", class: "segmented" });
    const search = el("input", { id: "log-search", type: "search", placeholder: "Filter lines\u2026",
      autocomplete: "off", spellcheck: "false" });
    const logStatus = el("span", { class: "muted log-status" });
    const pre = el("pre", { id: "log-text", class: "log" });
    const actions = el("div", { id: "job-actions", class: "actions" });
    main.append(
      el("div", { class: "page-head" },
        el("h1", {}, el("span", { id: "job-name", text: jobId }), " ",
          el("span", { id: "job-state", class: "badge" })),
        actions),
      el("p", { id: "action-error", class: "error", role: "alert" }),
      el("section", { class: "card" },
        el("div", { class: "progress-line" }, progress, el("span", { id: "job-progress-text" })),
        el("dl", { class: "facts" },
          el("dt", { text: "Job ID" }), el("dd", { text: jobId }),
          el("dt", { text: "Reason" }), f("job-reason"),
          el("dt", { text: "Sites" }), f("job-sites"),
          el("dt", { text: "Submitted by" }), f("job-submitted-by"),
          el("dt", { text: "Submitted" }), f("job-submitted"),
          el("dt", { text: "Duration" }), f("job-duration"),
          el("dt", { text: "Flower" }), f("job-flower"),
          el("dt", { text: "Fleet calls" }), f("job-fleet-calls"))),
      el("section", { class: "card" }, el("h2", { text: "Server metrics" }), serverCharts,
        el("h2", { text: "Client metrics per site" }), siteCharts),
      el("div", { class: "two-col" },
        el("section", { class: "card" }, el("h2", { text: "Run-config" }),
          el("pre", { id: "run-config", class: "code" })),
        el("section", { class: "card" }, el("h2", { text: "Result" }),
          el("pre", { id: "job-result", class: "code" }))),
      el("section", { class: "card" },
        el("div", { class: "log-head" }, el("h2", { text: "Logs" }), sourceButtons, search, logStatus),
        pre));

    // --- job facts and actions
    let job = null;
    let knownSites = null;
    const renderJob = guard((j) => {
      job = j;
      (j.sites || []).forEach(colourFor); // a site's colour by its place in the job, every run
      setText($("#job-name"), j.name || j.job_id);
      setBadge($("#job-state"), j.state);
      fillProgress(progress, j);
      setText($("#job-progress-text"), progressText(j));
      setText($("#job-reason"), j.reason);
      setText($("#job-sites"), (j.sites || []).join(", "));
      setText($("#job-submitted-by"), j.submitted_by);
      setText($("#job-submitted"), fmtTime(j.created));
      setText($("#job-duration"), fmtDuration(j.duration_s));
      setText($("#job-flower"), j.flower);
      setText($("#job-fleet-calls"), j.fleet_calls);
      const rc = j.run_config;
      setText($("#run-config"), rc && typeof rc === "object" ?
        Object.entries(rc).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join("\n") : rc);
      // A result that is not JSON comes as a string: show it as it is.
      setText($("#job-result"), j.result === null || j.result === undefined ? "" :
        typeof j.result === "string" ? j.result : JSON.stringify(j.result, null, 2));
      syncActions(j);
      const sites = (j.sites || []).join(",");
      if (sites !== knownSites) { knownSites = sites; loadSources(); }
    });

    function syncActions(j) {
      let abort = $("#abort-button");
      if (j.may_manage && !j.ended) {
        if (!abort) {
          abort = el("button", { id: "abort-button", type: "button", class: "danger", text: "Abort" });
          abort.addEventListener("click", doAbort);
          actions.prepend(abort);
        }
      } else if (abort) abort.remove();
      const dl = $("#download-button");
      if (j.may_manage && !dl) {
        actions.append(el("a", { id: "download-button", class: "button", href: `${apiBase}/download`,
          download: `job-${jobId}.tar.gz`, text: "Download" }));
      } else if (!j.may_manage && dl) dl.remove();
      const note = actions.querySelector(".view-only");
      if (!j.may_manage && !note) {
        actions.append(el("span", { class: "muted view-only",
          text: "View only: another admin submitted this job." }));
      } else if (j.may_manage && note) note.remove();
    }

    async function doAbort() {
      const btn = $("#abort-button");
      const err = $("#action-error");
      if (btn) btn.disabled = true;
      try {
        const res = await post(`${apiBase}/abort`);
        if (res.status >= 200 && res.status < 300) {
          setText(err, "");
          if (res.body && typeof res.body === "object" && res.body.job_id) renderJob(res.body);
        } else setText(err, errorText(res));
      } catch (e) {
        setText(err, `abort failed: ${e.message || e}`);
      } finally {
        const b = $("#abort-button");
        if (b) b.disabled = false;
      }
    }

    // --- charts: one per tag, created when the tag first appears, then updated in place
    const charts = new Map();
    const renderMetrics = guard((m) => {
      for (const [tag, pts] of Object.entries(m.server || {})) {
        const key = `server:${tag}`;
        if (!charts.has(key)) charts.set(key, newChart(serverCharts, key, tag, false));
        setSeries(charts.get(key), { [tag]: pts }, () => PALETTE[0]);
      }
      for (const [tag, bySite] of Object.entries(m.sites || {})) {
        const key = `sites:${tag}`;
        if (!charts.has(key)) charts.set(key, newChart(siteCharts, key, tag, true));
        setSeries(charts.get(key), bySite, colourFor);
      }
      serverCharts.classList.toggle("empty", !serverCharts.children.length);
      siteCharts.classList.toggle("empty", !siteCharts.children.length);
    });
    serverCharts.classList.add("empty");
    siteCharts.classList.add("empty");

    // --- logs: one button per source; the selected one tails through its SSE stream
    const log = { source: null, text: "", stream: null };

    function loadSources() {
      getJSON(`${apiBase}/logs?source=server&offset=0`)
        .then((d) => d.sources, () => null)
        .then(guard((sources) => {
          if (!sources || !sources.length) {
            sources = ["server", "superlink", ...((job && job.sites) || [])];
          }
          const have = [...sourceButtons.children].map((b) => b.dataset.logSource);
          if (have.join("\n") !== sources.join("\n")) {
            sourceButtons.replaceChildren(...sources.map((s) => el("button", {
              type: "button", text: s, dataset: { logSource: s }, on: { click: () => selectSource(s) } })));
          }
          if (!log.source || !sources.includes(log.source)) selectSource(sources[0]);
          else markSelected();
        }));
    }

    function markSelected() {
      for (const b of sourceButtons.children) {
        b.classList.toggle("selected", b.dataset.logSource === log.source);
        b.setAttribute("aria-pressed", String(b.dataset.logSource === log.source));
      }
    }

    function selectSource(source) {
      if (log.stream) {
        log.stream.close();
        page.streams = page.streams.filter((s) => s !== log.stream);
      }
      log.source = source;
      log.text = "";
      markSelected();
      setText(logStatus, "tailing\u2026");
      renderLog(true);
      const s = stream(`${apiBase}/logs/stream?source=${encodeURIComponent(source)}`, {
        log: (d) => {
          if (log.stream !== s) return;
          log.text += d.text || "";
          // Keep memory bounded on very long logs: drop the oldest lines past ~2 MB.
          if (log.text.length > 2e6) log.text = log.text.slice(log.text.indexOf("\n", 5e5) + 1);
          renderLog(false);
        },
        // The relay refused the log: the server then keeps the stream idle, so ask again later.
        refused: (d) => {
          if (log.stream !== s) return;
          setText(logStatus, `log unavailable: ${d.error || "refused"}`);
          setTimeout(guard(() => { if (log.stream === s && !s.closed) selectSource(source); }), 5000);
        },
        end: () => {
          if (log.stream !== s) return;
          setText(logStatus, "job ended: log complete");
          s.close();
        },
      }, () => { log.text = ""; renderLog(false); }); // a fresh stream starts from offset 0
      log.stream = s;
    }

    /** Show the log, filtered by the search box, and stay at the bottom unless scrolled up. */
    function renderLog(forceBottom) {
      const atBottom = forceBottom || pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
      const q = search.value.trim().toLowerCase();
      const all = log.text.replace(ANSI, ""); // colour codes, as Flower writes its levels
      const text = q ? all.split("\n").filter((l) => l.toLowerCase().includes(q)).join("\n") : all;
      setText(pre, text);
      pre.dataset.empty = q ? "no line matches the search" : "no log lines yet";
      if (atBottom) pre.scrollTop = pre.scrollHeight;
    }
    search.addEventListener("input", () => renderLog(true));

    // --- load the job once (a job that does not exist gets no stream), then live
    const live = guard(() => stream(`${apiBase}/events`, { job: renderJob, metrics: renderMetrics }));
    getJSON(apiBase).then((j) => { renderJob(j); live(); }, guard((e) => {
      if (e.status === 404) {
        main.replaceChildren(el("h1", { text: "Job not found" }),
          el("p", { class: "error", text: e.message }),
          el("p", {}, el("a", { href: "#/jobs", text: "Back to the jobs" })));
        return;
      }
      setNotice(`Could not load the job: ${e.message}`);
      live(); // e.g. the relay is down: the stream says so and brings the job when it is back
    }));
  }

  // ---------------------------------------------------------------- submit page

  function submitPage(main) {
    const field = (id, label, attrs = {}, hint = "") =>
      el("div", { class: "field" }, el("label", { for: id, text: label }),
        el("input", { id, name: id, ...attrs }),
        hint ? el("small", { class: "muted", text: hint }) : "");
    const error = el("p", { id: "submit-error", class: "error", role: "alert" });
    const button = el("button", { id: "submit-button", type: "submit", class: "primary", text: "Submit job" });
    const form = el("form", { id: "submit-form", class: "card form" },
      field("submit-path", "App directory", { type: "text", required: true,
        placeholder: "/home/me/my-flower-app" }, "A path on this machine (the Flower app's directory)."),
      field("submit-sites", "Sites", { type: "text", placeholder: "site-a,site-b" },
        "Comma-separated; empty = min-sites sites among those online."),
      field("submit-min-sites", "Min sites", { type: "number", min: "0", step: "1", value: "0" },
        "0 = the job file's min_sites."),
      field("submit-run-config", "Run-config", { type: "text", placeholder: "num-server-rounds=5 lr=0.01" },
        "Overrides as k=v pairs separated by spaces."),
      field("submit-name", "Name", { type: "text", placeholder: "(the job file's name)" }),
      field("submit-time-limit", "Time limit (s)", { type: "number", min: "0", step: "any", value: "0" },
        "0 = the job file's time limit, else the relay's default."),
      el("div", { class: "form-actions" }, button), error);
    main.append(el("h1", { text: "Submit a job" }), form);

    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      setText(error, "");
      const v = (id) => $(`#${id}`).value.trim();
      const body = {
        path: v("submit-path"),
        sites: v("submit-sites"),
        min_sites: parseInt(v("submit-min-sites") || "0", 10) || 0,
        run_config: v("submit-run-config"),
        name: v("submit-name"),
        time_limit: parseFloat(v("submit-time-limit") || "0") || 0,
      };
      button.disabled = true;
      setText(button, "Submitting\u2026");
      try {
        const res = await post("/api/jobs", body);
        if (res.status === 201 && res.body && res.body.job_id) {
          location.hash = `#/job/${encodeURIComponent(res.body.job_id)}`;
          return;
        }
        setText(error, errorText(res));
      } catch (e) {
        setText(error, `submit failed: ${e.message || e}`);
      } finally {
        button.disabled = false;
        setText(button, "Submit job");
      }
    });
  }

  // ---------------------------------------------------------------- router

  function route() {
    leavePage();
    const main = $("#main");
    main.replaceChildren(el("p", { id: "page-notice", class: "error", role: "status" }));
    const hash = location.hash || "#/federation";
    let m;
    let nav = "federation";
    if ((m = hash.match(/^#\/job\/(.+)$/))) {
      nav = "jobs";
      jobPage(main, decodeURIComponent(m[1]));
    } else if (hash === "#/jobs") {
      nav = "jobs";
      jobsPage(main);
    } else if (hash === "#/submit") {
      nav = "submit";
      submitPage(main);
    } else {
      federationPage(main);
    }
    for (const a of document.querySelectorAll("header nav a")) {
      a.classList.toggle("active", a.id === `nav-${nav}`);
    }
    document.title = `flgate console \u2013 ${nav === "jobs" && m ? "job" : nav}`;
  }

  function start() {
    getJSON("/api/me").then((me) => {
      const who = $("#whoami");
      who.replaceChildren(el("span", { class: "who-name", text: me.name }), " ",
        el("span", { class: "who-role", text: me.admin_role }));
      who.title = me.relay ? `relay ${me.relay}` : "";
    }).catch((e) => setText($("#whoami"), `(${e.message})`));
    window.addEventListener("hashchange", route);
    route();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
