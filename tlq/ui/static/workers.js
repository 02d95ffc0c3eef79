// The workers page: live workers and queue depths from /api/workers every second ("nothing queued or running"
// in place of an empty queues table).
"use strict";

(() => {
  const workers = document.getElementById("workers").tBodies[0];
  const queues = document.getElementById("queues").tBodies[0];

  function workerRow(w) {
    const jobs = tlq.el("td", { class: "jobs" });
    w.current_jobs.forEach((id, i) => {
      if (i) jobs.append(", ");
      jobs.append(tlq.el("a", { href: `/jobs/${Number(id)}` }, id));
    });
    return tlq.el(
      "tr",
      { "data-worker": w.name },
      tlq.el("td", { class: "name" }, w.name),
      tlq.el("td", { class: "host" }, w.hostname),
      tlq.el("td", { class: "queues" }, w.queues.join(", ")),
      tlq.el("td", { class: "device" }, w.device),
      tlq.el("td", { class: "concurrency" }, w.concurrency),
      jobs,
      tlq.el("td", { class: "seen", title: w.last_seen }, `${Math.round(w.seconds_since_seen)} s ago`),
    );
  }

  function queueRow(q) {
    return tlq.el(
      "tr",
      { "data-queue": q.queue },
      tlq.el("td", { class: "queue" }, q.queue),
      tlq.el("td", { class: "queued" }, q.queued),
      tlq.el("td", { class: "running" }, q.running),
    );
  }

  // Rebuilt rows replace the old ones only where they differ, so the table does not flicker.
  function sync(body, rows) {
    rows.forEach((row, i) => {
      const now = body.rows[i];
      if (!now) body.append(row);
      else if (!now.isEqualNode(row)) now.replaceWith(row);
    });
    while (body.rows.length > rows.length) body.rows[body.rows.length - 1].remove();
  }

  tlq.poll(async () => {
    const answer = await tlq.getJSON("/api/workers");
    if (!answer.ok) return tlq.showError(answer.data.error);
    tlq.showError("");
    sync(workers, answer.data.workers.map(workerRow));
    sync(queues, answer.data.queues.map(queueRow));
    document.getElementById("no-workers").hidden = answer.data.workers.length > 0;
    document.getElementById("queues").hidden = answer.data.queues.length === 0;
    document.getElementById("no-queues").hidden = answer.data.queues.length > 0;
  }, 1000);
})();
