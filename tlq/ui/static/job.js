// One job's page: status and progress from /api/jobs/ID every second while the job is not final, its curves from
// /api/jobs/ID/metrics (one uPlot chart per metric), and the server-rendered sections (attempts, lineage, error,
// artifacts, log) swapped in from a fresh copy of the page when they change. Cancel and retry POST with the
// CSRF header.
"use strict";

(() => {
  const article = document.getElementById("job");
  const jobId = article.dataset.jobId;
  const maxPoints = article.dataset.maxPoints || "1000";
  const SECTIONS = ["details", "params", "lineage", "attempts", "job-error", "artifacts", "log"];
  let signature = null;
  let checked = 0;

  function chartDiv(name) {
    const charts = document.getElementById("charts");
    for (const div of charts.querySelectorAll("div.chart")) if (div.dataset.metric === name) return div;
    const placeholder = document.getElementById("no-metrics");
    if (placeholder) placeholder.remove();
    const div = tlq.el("div", { class: "chart", "data-metric": name, "data-points": 0 });
    charts.append(div);
    return div;
  }

  async function drawMetrics() {
    const answer = await tlq.getJSON(`/api/jobs/${jobId}/metrics?max_points=${maxPoints}`);
    if (!answer.ok) return tlq.showError(answer.data.error);
    for (const [name, s] of Object.entries(answer.data.metrics)) {
      const div = chartDiv(name);
      div.dataset.rows = String(s.points);
      tlq.chart(div, name, [{ label: name, steps: s.steps, values: s.values }]);
    }
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

  drawMetrics().then(() => tlq.poll(refresh, 1000));
})();
