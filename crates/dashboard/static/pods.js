// Pod history charts: fetches the pod's samples as columns and draws them with uPlot; refreshes while "Live" is on.
(function () {
  "use strict";
  const root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  const url = root.dataset.samples;
  const note = document.getElementById("chart-note");
  const live = document.getElementById("live");
  let range = 900;
  let charts = [];
  let timer = null;
  let window_ = [0, 1];

  function width() { return Math.max(320, root.clientWidth - 40); }

  function draw(data) {
    const kv = [data.t, data.kv_usage.map((v) => v * 100)];
    const load = [data.t, data.queue, data.running];
    if (charts.length === 0) {
      charts.push(new uPlot({
        width: width(), height: 220,
        scales: { x: { time: true, range: () => window_ }, y: { range: [0, 100] } },
        series: [{}, { label: "KV cache %", stroke: "#3558d8", fill: "rgba(53,88,216,0.08)", width: 2 }],
        axes: [{}, { values: (u, vals) => vals.map((v) => v + " %") }],
      }, kv, document.getElementById("chart-kv")));
      charts.push(new uPlot({
        width: width(), height: 220,
        scales: { x: { time: true, range: () => window_ }, y: { range: (u, min, max) => [0, Math.max(4, max)] } },
        series: [{}, { label: "queued", stroke: "#e07b39", width: 2 }, { label: "running", stroke: "#2f9e8f", width: 2 }],
      }, load, document.getElementById("chart-load")));
    } else {
      charts[0].setData(kv);
      charts[1].setData(load);
    }
    const points = data.t.length;
    note.textContent = points === 0
      ? "No samples in this range yet."
      : points + " points" + (data.bucket_ms > 1000 ? ", each the mean of " + data.bucket_ms / 1000 + " s" : ", one per second");
  }

  function load() {
    const to = Date.now();
    const from = to - range * 1000;
    window_ = [from / 1000, to / 1000];
    fetch(url + "?from=" + from + "&to=" + to, { credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
      .then(draw)
      .catch(() => { note.textContent = "Could not load samples."; });
  }

  function schedule() {
    if (timer) clearInterval(timer);
    timer = live.checked ? setInterval(load, 2000) : null;
  }

  root.querySelectorAll("[data-range]").forEach((button) => {
    button.addEventListener("click", () => {
      root.querySelectorAll("[data-range]").forEach((b) => b.classList.remove("active"));
      button.classList.add("active");
      range = Number(button.dataset.range);
      load();
    });
  });
  live.addEventListener("change", schedule);
  window.addEventListener("resize", () => charts.forEach((c) => c.setSize({ width: width(), height: 220 })));
  load();
  schedule();
})();
