// What every page's script shares: JSON reads, CSRF-protected writes, building elements from data (always as
// text: never innerHTML with data), number and time formats matching the server's, and uPlot charts.
"use strict";

const tlq = (() => {
  const FINAL = ["succeeded", "failed", "cancelled"];

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return rest.join("=");
    }
    return "";
  }

  // Whether #error shows an outage (no answer from the server, or a 5xx: its database is down): the next answer
  // clears it, so a page recovers by itself. A 4xx (a bad filter) is the caller's to show and clear.
  let outage = false;

  // {ok, status, data} of a JSON call; status 0 when the server did not answer.
  async function call(url, options) {
    let response;
    try {
      response = await fetch(url, { credentials: "same-origin", ...options });
    } catch (e) {
      outage = true;
      const error = "no answer from tlq ui (stopped, or the network is down); retrying";
      return { ok: false, status: 0, data: { error } };
    }
    let data = null;
    try {
      data = await response.json();
    } catch (e) {
      data = { error: `${response.status} ${response.statusText}` };
    }
    if (response.status >= 500) outage = true;
    else if (outage) {
      outage = false;
      showError("");
    }
    return { ok: response.ok, status: response.status, data };
  }

  function getJSON(url) {
    return call(url, { headers: { Accept: "application/json" } });
  }

  function post(url) {
    return call(url, { method: "POST", headers: { "X-CSRF-Token": cookie("tlq_csrf"), Accept: "application/json" } });
  }

  // An element with attributes and text; children appended as given (elements or strings, as text nodes).
  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setText(node, text) {
    const value = text === null || text === undefined ? "" : String(text);
    if (node && node.textContent !== value) node.textContent = value;
  }

  function showError(message) {
    setText(document.getElementById("error"), message || "");
  }

  // As tlq.ui.app.format_number: integers whole, else Python's "{:.4g}".
  function num(value) {
    if (value === null || value === undefined) return "";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value) && Math.abs(value) < 1e15) return String(value);
    if (!Number.isFinite(value)) return String(value);
    const [mantissa, exponent] = value.toExponential(3).split("e");
    const exp = Number(exponent);
    if (exp < -4 || exp >= 4) {
      return `${trimZeros(mantissa)}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
    }
    return trimZeros(value.toFixed(3 - exp));
  }

  function trimZeros(text) {
    return text.includes(".") ? text.replace(/0+$/, "").replace(/\.$/, "") : text;
  }

  function when(iso) {
    return iso ? iso.slice(0, 19).replace("T", " ") : "";
  }

  function tags(object) {
    return Object.entries(object || {})
      .map(([k, v]) => `${k}=${v}`)
      .join(", ");
  }

  function param(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  // Calls `step` (which may return a promise) `ms` milliseconds after the previous call ended, or three times as
  // long as that call took if longer (the curves of a million-row job take seconds to thin: a tab then costs the
  // server a quarter of a core, not all of it), while it does not return false; pauses while the tab is hidden.
  function poll(step, ms = 1000) {
    let stopped = false;
    async function loop() {
      if (stopped) return;
      let again = true;
      const started = Date.now();
      if (!document.hidden) {
        try {
          again = (await step()) !== false;
        } catch (e) {
          showError(String(e));
        }
      }
      if (again) setTimeout(loop, Math.max(ms, 3 * (Date.now() - started)));
    }
    setTimeout(loop, ms);
    return () => {
      stopped = true;
    };
  }

  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  // Draws (or redraws) a chart in `div` of series [{label, steps, values}] over their steps; sets data-points to
  // the number of points drawn.
  function chart(div, metric, series) {
    const steps = [...new Set(series.flatMap((s) => s.steps))].sort((a, b) => a - b);
    const index = new Map(steps.map((step, i) => [step, i]));
    const columns = series.map((s) => {
      const column = new Array(steps.length).fill(null);
      s.steps.forEach((step, i) => {
        column[index.get(step)] = s.values[i];
      });
      return column;
    });
    const points = series.reduce((sum, s) => sum + s.values.length, 0);
    const data = [steps, ...columns];
    const width = Math.max(320, Math.min(div.clientWidth || 640, 900));
    if (div._plot && div._plot.series.length === series.length + 1) {
      div._plot.setData(data);
    } else {
      if (div._plot) div._plot.destroy();
      const options = {
        title: metric,
        width,
        height: 260,
        scales: { x: { time: false, range: (u, min, max) => (min === max ? [min - 1, max + 1] : [min, max]) } },
        axes: [{ label: "step" }, { size: 60, values: (u, ticks) => ticks.map(num) }],
        series: [
          { label: "step" },
          ...series.map((s, i) => ({
            label: s.label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: true,
            points: { show: s.values.length <= 60 },
          })),
        ],
      };
      const heading = div.querySelector("h3");
      if (heading) heading.remove();
      div._plot = new uPlot(options, data, div);
    }
    div.dataset.points = String(points);
  }

  return { FINAL, cookie, getJSON, post, el, setText, showError, num, when, tags, param, poll, chart };
})();
