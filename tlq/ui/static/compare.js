// A group's or the picked jobs' page: every metric's curves overlaid, one series per job (from
// /api/jobs/ID/metrics), and the leaderboard's status cells kept live while any job runs.
"use strict";

(() => {
  const article = document.getElementById("comparison");
  const ids = (article.dataset.jobs || "").split(",").filter((id) => id !== "");
  const maxPoints = 1000;

  function label(row) {
    const backbone = row.querySelector("td.backbone");
    const params = [...row.querySelectorAll("td.param")].map((cell) => `${cell.dataset.param}=${cell.textContent}`);
    return [`job ${row.dataset.jobId}`, backbone ? backbone.textContent : "", ...params].filter(Boolean).join(" ");
  }

  function labels() {
    const found = new Map();
    for (const row of document.querySelectorAll("#leaderboard tbody tr")) found.set(row.dataset.jobId, label(row));
    return found;
  }

  async function draw() {
    const answers = await Promise.all(ids.map((id) => tlq.getJSON(`/api/jobs/${id}/metrics?max_points=${maxPoints}`)));
    const names = labels();
    const byMetric = new Map();
    answers.forEach((answer, i) => {
      if (!answer.ok) return;
      for (const [name, s] of Object.entries(answer.data.metrics)) {
        if (!byMetric.has(name)) byMetric.set(name, []);
        byMetric.get(name).push({ label: names.get(ids[i]) || `job ${ids[i]}`, steps: s.steps, values: s.values });
      }
    });
    const charts = document.getElementById("charts");
    for (const [name, series] of byMetric) {
      let div = [...charts.querySelectorAll("div.chart")].find((d) => d.dataset.metric === name);
      if (!div) {
        div = tlq.el("div", { class: "chart", "data-metric": name, "data-points": 0 });
        charts.append(div);
      }
      tlq.chart(div, name, series);
    }
  }

  async function refresh() {
    const running = [...document.querySelectorAll("#leaderboard td.status")].some(
      (cell) => !tlq.FINAL.includes(cell.dataset.status),
    );
    if (!running) return true;
    const query = article.dataset.group ? `group=${article.dataset.group}` : `jobs=${ids.join(",")}`;
    const metric = article.dataset.metric ? `&metric=${encodeURIComponent(article.dataset.metric)}` : "";
    const answer = await tlq.getJSON(`/api/compare?${query}${metric}`);
    if (!answer.ok) return true;
    for (const row of answer.data) {
      const tr = document.querySelector(`#leaderboard tr[data-job-id="${Number(row.job)}"]`);
      if (!tr) continue;
      const status = tr.querySelector("td.status");
      tlq.setText(status, row.status);
      status.dataset.status = row.status;
      tlq.setText(tr.querySelector("td.best"), tlq.num(row.best));
      tlq.setText(tr.querySelector("td.final"), tlq.num(row.final));
      tlq.setText(tr.querySelector("td.epochs"), tlq.num(row.epochs));
    }
    await draw();
    return true;
  }

  draw().then(() => tlq.poll(refresh, 1000));
})();
