// One job's page: status and progress from /api/jobs/ID every second while the job is not final, its metrics from
// /api/jobs/ID/metrics (those recorded once in a table, the others as uPlot charts, one per group of metrics
// that share a scale, as the server groups them), and the server-rendered sections (attempts, lineage, error,
// artifacts, log) swapped in from a fresh copy of the page when they change. Cancel and retry POST with the
// CSRF header.
"use strict";

(() => {
  const article = document.getElementById("job");
  const jobId = article.dataset.jobId;
  const maxPoints = article.dataset.maxPoints || "1000";
  const SECTIONS = ["details", "params", "lineage", "attempts", "job-error-section", "artifacts", "log"];
  let signature = null;
  let checked = 0;

  // The metrics recorded once, as rows of the table #scalars: name, value (as the server formats it).
  function showScalars(names, metrics) {
    const table = document.getElementById("scalars");
    const body = table.tBodies[0];
    const rows = names.map((name) => {
      const value = metrics[name].values[metrics[name].values.length - 1];
      return tlq.el(
        "tr",
        { "data-metric": name },
        tlq.el("th", {}, name),
        tlq.el("td", { class: "value", "data-value": value }, tlq.num(value)),
      );
    });
    rows.forEach((row, i) => {
      const now = body.rows[i];
      if (!now) body.append(row);
      else if (!now.isEqualNode(row)) now.replaceWith(row);
    });
    while (body.rows.length > rows.length) body.rows[body.rows.length - 1].remove();
    table.hidden = rows.length === 0;
  }

  // The others as charts, one per group of names that share a scale (data-metric "a,b", data-points "n,m").
  function showCharts(groups, metrics) {
    const charts = document.getElementById("charts");
    const existing = new Map([...charts.querySelectorAll("div.chart")].map((div) => [div.dataset.metric, div]));
    const divs = groups.map((names) => {
      const key = names.join(",");
      const div = existing.get(key) || tlq.el("div", { class: "chart", "data-metric": key });
      existing.delete(key);
      if (!div.isConnected) charts.append(div);
      const series = names.map((name) => ({ label: name, steps: metrics[name].steps, values: metrics[name].values }));
      tlq.chart(div, names.join(", "), series);
      div.dataset.points = names.map((name) => metrics[name].steps.length).join(",");
      div.dataset.rows = names.map((name) => metrics[name].points).join(",");
      return div;
    });
    for (const div of existing.values()) {
      if (div._plot) div._plot.destroy();
      div.remove();
    }
    if (divs.some((div, i) => charts.children[i] !== div)) charts.append(...divs);
  }

  async function drawMetrics() {
    const answer = await tlq.getJSON(`/api/jobs/${jobId}/metrics?max_points=${maxPoints}`);
    if (!answer.ok) return tlq.showError(answer.data.error);
    const { metrics, scalars, charts } = answer.data;
    showScalars(scalars, metrics);
    showCharts(charts, metrics);
    document.getElementById("no-metrics").hidden = scalars.length + charts.length > 0;
  }

  // The server renders these sections; a fresh copy replaces them whole (parsed, never assigned as HTML).
  async function swapSections() {
    const response = await fetch(`/jobs/${jobId}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
    for (const id of SECTIONS) {
      const now = document.getElementById(id);
      const next = fresh.getElementById(id);
      if (now && next) now.replaceWith(document.importNode(next, true));
    }
  }

  function showStatus(job) {
    const status = document.getElementById("status");
    tlq.setText(status, job.status);
    status.dataset.status = job.status;
    const progress = document.getElementById("progress");
    if (job.progress.total) {
      progress.max = job.progress.total;
      progress.value = job.progress.current || 0;
      progress.hidden = false;
    }
    tlq.setText(document.getElementById("stage"), job.progress.stage || "");
    document.getElementById("cancel").disabled = tlq.FINAL.includes(job.status);
  }

  async function refresh() {
    const status = document.getElementById("status").dataset.status;
    if (tlq.FINAL.includes(status) && Date.now() - checked < 5000) return true; // a final job changes rarely
    checked = Date.now();
    const answer = await tlq.getJSON(`/api/jobs/${jobId}`);
    if (!answer.ok) {
      tlq.showError(answer.data.error);
      return true;
    }
    const job = answer.data;
    showStatus(job);
    const now = JSON.stringify([job.status, job.attempts, job.artifacts.length, job.error, job.children, job.worker]);
    const final = tlq.FINAL.includes(job.status);
    if (!final || now !== signature) await drawMetrics();
    if (signature !== null && now !== signature) await swapSections();
    signature = now;
    return true; // keep following: a final job can still be retried from elsewhere, or its children change
  }

  document.getElementById("cancel").addEventListener("click", async () => {
    const answer = await tlq.post(`/api/jobs/${jobId}/cancel`);
    if (!answer.ok) return tlq.showError(answer.data.error);
    tlq.showError("");
    await refresh();
  });

  document.getElementById("retry").addEventListener("click", async () => {
    const answer = await tlq.post(`/api/jobs/${jobId}/retry`);
    if (!answer.ok) return tlq.showError(answer.data.error);
    window.location.href = `/jobs/${answer.data.id}`;
  });

  // The first call draws the metrics (the page holds none of their history); then one a second.
  refresh()
    .catch((e) => tlq.showError(String(e)))
    .finally(() => tlq.poll(refresh, 1000));
})();
