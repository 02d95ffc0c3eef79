// The jobs page: filters applied without a reload, the table refreshed from /api/jobs every second (rows updated
// in place, so a picked checkbox stays picked), and the picked jobs opened in /compare.
"use strict";

(() => {
  const form = document.getElementById("filters");
  const table = document.getElementById("jobs");
  const body = table.tBodies[0];
  const picked = new Set();
  let page = Number(table.dataset.page) || 1;
  let filterError = document.getElementById("error").textContent !== "";

  function filters() {
    const params = new URLSearchParams();
    for (const [key, value] of new FormData(form)) {
      if (String(value).trim() !== "") params.set(key, String(value));
    }
    return params;
  }

  function pageLink(params, number) {
    const query = new URLSearchParams(params);
    query.set("page", String(number));
    return `/?${query}`;
  }

  function cells(job) {
    const progress = [];
    if (job.progress.total) {
      progress.push(tlq.el("progress", { max: job.progress.total, value: job.progress.current || 0 }), " ");
    }
    progress.push(tlq.el("span", { class: "stage" }, job.progress.stage || ""));
    const headline = job.headline.value === null || job.headline.value === undefined
      ? ""
      : `${job.headline.name} ${tlq.num(job.headline.value)}`;
    return {
      id: [tlq.el("a", { href: `/jobs/${job.id}` }, job.id)],
      status: [job.status],
      task: [job.task],
      backbone: [job.backbone || ""],
      name: [tlq.el("a", { href: `/jobs/${job.id}` }, job.name || "")],
      tags: [tlq.tags(job.tags)],
      progress,
      headline: [headline],
      worker: [job.worker || ""],
      created: [tlq.el("time", { datetime: job.created_at }, tlq.when(job.created_at))],
    };
  }

  function newRow(job) {
    const box = tlq.el("input", { type: "checkbox", class: "pick", value: job.id, "aria-label": `pick job ${job.id}` });
    box.checked = picked.has(String(job.id));
    const row = tlq.el("tr", { "data-job-id": job.id }, tlq.el("td", { class: "pick-cell" }, box));
    for (const name of Object.keys(cells(job))) row.append(tlq.el("td", { class: name }));
    return row;
  }

  // Replaces a cell's children only when what it shows changed (a stable DOM for clicks and selections).
  function fill(row, job) {
    for (const [name, children] of Object.entries(cells(job))) {
      const cell = row.querySelector(`td.${name}`);
      const fresh = tlq.el("td", { class: name }, ...children);
      if (name === "status") cell.dataset.status = job.status;
      if (cell.innerHTML !== fresh.innerHTML) cell.replaceChildren(...fresh.childNodes);
    }
  }

  function render(data) {
    const rows = new Map([...body.rows].map((row) => [row.dataset.jobId, row]));
    const wanted = data.jobs.map((job) => String(job.id));
    for (const [id, row] of rows) if (!wanted.includes(id)) row.remove();
    data.jobs.forEach((job, i) => {
      let row = rows.get(String(job.id));
      if (!row) row = newRow(job);
      fill(row, job);
      if (body.rows[i] !== row) body.insertBefore(row, body.rows[i] || null);
    });
    page = data.page;
    const last = Math.max(1, Math.ceil(data.total / data.per_page));
    const params = filters();
    const prev = document.getElementById("prev");
    const next = document.getElementById("next");
    prev.href = pageLink(params, Math.max(1, page - 1));
    next.href = pageLink(params, Math.min(last, page + 1));
    prev.toggleAttribute("aria-disabled", page <= 1);
    next.toggleAttribute("aria-disabled", page >= last);
    tlq.setText(document.getElementById("summary"), `${data.total} jobs`);
    tlq.setText(document.getElementById("page-number"), `page ${page}`);
    Object.assign(table.dataset, { page: data.page, perPage: data.per_page, total: data.total });
  }

  async function refresh() {
    const params = filters();
    params.set("page", String(page));
    const answer = await tlq.getJSON(`/api/jobs?${params}`);
    if (!answer.ok) {
      tlq.showError(answer.data.error);
      if (answer.status >= 400 && answer.status < 500) {
        filterError = true; // a bad filter matches nothing; an outage keeps the rows shown until it ends
        render({ jobs: [], page: 1, per_page: 50, total: 0 });
      }
      return;
    }
    if (filterError) tlq.showError("");
    filterError = false;
    render(answer.data);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    page = 1;
    const params = filters();
    history.replaceState(null, "", params.toString() ? `/?${params}` : "/");
    await refresh();
  });

  for (const link of [document.getElementById("prev"), document.getElementById("next")]) {
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      if (link.hasAttribute("aria-disabled")) return;
      page = Number(new URL(link.href).searchParams.get("page")) || 1;
      history.replaceState(null, "", link.href);
      await refresh();
    });
  }

  body.addEventListener("change", (event) => {
    const box = event.target;
    if (!box.classList.contains("pick")) return;
    if (box.checked) picked.add(box.value);
    else picked.delete(box.value);
  });
  for (const box of body.querySelectorAll("input.pick:checked")) picked.add(box.value);

  document.getElementById("compare").addEventListener("click", () => {
    const ids = [...body.querySelectorAll("input.pick:checked")].map((box) => box.value);
    for (const id of picked) if (!ids.includes(id)) ids.push(id);
    if (ids.length === 0) {
      tlq.showError("pick jobs to compare with the boxes in the first column");
      return;
    }
    window.location.href = `/compare?jobs=${ids.join(",")}`;
  });

  tlq.poll(refresh, 1000);
})();
