// opflow's web UI: live progress for a run's page. Every page reads without this script;
// with it, a run's bars, counts, rate and ETA follow the run over the page's event stream
// (`/runs/{id}/live`), which sends the server's aggregates at most once a second: never
// one message, nor one element, per step.
"use strict";

(function () {
  const SYMBOLS = { succeeded: "✓", failed: "✗", running: "▶", queued: "…", canceled: "⊘", waiting: "…", done: "✓" };

  function setStatus(element, status) {
    if (!element) return;
    element.className = "status status-" + status;
    element.dataset.status = status;
    element.textContent = "";
    const symbol = document.createElement("span");
    symbol.setAttribute("aria-hidden", "true");
    symbol.textContent = SYMBOLS[status] || "•";
    element.append(symbol, " " + status);
  }

  function setBar(bar, parts, finished, text) {
    if (!bar) return;
    for (const seg of bar.querySelectorAll("[data-part]")) {
      const pct = parts[seg.dataset.part] || 0;
      seg.style.width = pct.toFixed(3) + "%";
    }
    bar.setAttribute("aria-valuenow", String(finished));
    bar.setAttribute("aria-valuetext", text);
  }

  function setText(root, selector, text) {
    const element = root.querySelector(selector);
    if (element && element.textContent !== text) element.textContent = text;
  }

  function apply(root, data) {
    setStatus(root.querySelector("[data-run-status]"), data.status);
    setBar(root.querySelector("#run-bar .bar"), data.parts, data.finished, data.text);
    setText(root, "#run-bar-text", data.text);
    setText(root, "#run-rate", data.rate);
    setText(root, "#run-eta", data.eta);
    setText(root, "#run-elapsed", data.elapsed);
    for (const asset of data.assets) {
      const row = root.querySelector('tr[data-asset="' + asset.index + '"]');
      if (row) {
        setBar(row.querySelector(".bar"), asset.parts, asset.finished, asset.text);
        setText(row, ".asset-done", asset.done);
        setText(row, ".asset-rate", asset.rate);
        setText(row, ".asset-eta", asset.eta);
        setStatus(row.querySelector("[data-asset-state]"), asset.state);
      }
      const node = root.querySelector('g[data-asset="' + asset.index + '"]');
      if (node) {
        node.classList.remove("state-waiting", "state-running", "state-done");
        node.classList.add("state-" + asset.state);
        node.classList.toggle("has-failed", asset.failed > 0);
        setText(node, ".sub", asset.done);
      }
    }
  }

  function follow(root) {
    const url = root.dataset.liveUrl;
    const dot = root.querySelector(".live-dot");
    const source = new EventSource(url);
    source.addEventListener("open", function () {
      if (dot) { dot.dataset.live = "on"; dot.textContent = "live"; }
    });
    source.addEventListener("progress", function (event) {
      apply(root, JSON.parse(event.data));
    });
    source.addEventListener("end", function (event) {
      apply(root, JSON.parse(event.data));
      source.close();
      for (const element of root.querySelectorAll("[data-while-running]")) element.hidden = true;
      const ended = root.querySelector("#run-ended");
      if (ended) ended.hidden = false;
      if (dot) { dot.dataset.live = "off"; dot.textContent = "ended"; }
    });
    source.addEventListener("error", function () {
      if (dot && source.readyState === EventSource.CLOSED) { dot.dataset.live = "off"; dot.textContent = "not live"; }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    for (const root of document.querySelectorAll("[data-live-url]")) follow(root);
  });
})();
