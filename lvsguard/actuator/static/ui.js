// lvsguard console: live refresh of the values a page shows, and the connections/s chart.
// No framework, no inline script (the Content-Security-Policy allows 'self' only).
"use strict";

(function () {
  const body = document.body;
  const every = Number(body.dataset.refresh || 0) * 1000;
  const canvas = document.getElementById("chart");
  const history = {};           // real server -> [cps, ...]
  const POINTS = 60;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

  function update(values) {
    document.querySelectorAll("[data-live]").forEach(function (el) {
      const value = values[el.dataset.live];
      if (value !== undefined && el.textContent !== value) {
        el.textContent = value;
        if (el.dataset.value !== undefined) el.dataset.value = value;  // styles by value (health)
      }
    });
  }

  function draw(series) {
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 28;
    Object.keys(series).forEach(function (name) {
      (history[name] = history[name] || []).push(series[name]);
      if (history[name].length > POINTS) history[name].shift();
    });
    let max = 1;
    Object.values(history).forEach(function (points) { points.forEach(function (v) { max = Math.max(max, v); }); });
    ctx.clearRect(0, 0, w, h);
    ctx.strokeStyle = "#ccc";
    ctx.fillStyle = "#555";
    ctx.font = "11px sans-serif";
    ctx.beginPath(); ctx.moveTo(pad, 4); ctx.lineTo(pad, h - 16); ctx.lineTo(w - 4, h - 16); ctx.stroke();
    ctx.fillText(String(max), 2, 12);
    ctx.fillText("0", 2, h - 16);
    const legend = document.getElementById("legend");
    legend.textContent = "";
    Object.keys(history).sort().forEach(function (name, i) {
      const points = history[name], color = COLORS[i % COLORS.length];
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      points.forEach(function (v, j) {
        const x = pad + (w - pad - 6) * (j + POINTS - points.length) / (POINTS - 1);
        const y = (h - 16) - (h - 24) * v / max;
        if (j === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
      });
      ctx.stroke();
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch"; swatch.style.background = color;
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(name + ": " + points[points.length - 1] + "/s"));
      legend.appendChild(item);
    });
  }

  function updateJobs(jobs) {
    if (jobs.some(function (job) { return !document.querySelector('[data-job="' + job.id + '|state"]'); })) {
      location.reload();  // a new job: its row comes with the page
      return;
    }
    jobs.forEach(function (job) {
      const state = document.querySelector('[data-job="' + job.id + '|state"]');
      state.textContent = job.state;
      const bar = document.querySelector('[data-job="' + job.id + '|progress"]');
      bar.value = job.progress;
      bar.textContent = Math.round(job.progress * 100) + "%";
      document.querySelector('[data-job="' + job.id + '|message"]').textContent = job.message;
    });
  }

  function tick() {
    const jobsPage = document.getElementById("jobs");
    const url = jobsPage ? "jobs.json" : "live.json";
    fetch(url, {credentials: "same-origin", cache: "no-store"})
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        if (jobsPage) { updateJobs(data.jobs); return; }
        if (body.dataset.layout !== undefined && data.layout !== body.dataset.layout) {
          location.reload();  // a real server or a service came or went: new rows come with the page
          return;
        }
        update(data.values);
        if (canvas) draw(data.chart[canvas.dataset.service] || {});
        body.dataset.updated = String(Date.now());
      })
      .catch(function () { body.dataset.stale = "1"; })
      .finally(function () { setTimeout(tick, every); });
  }

  if (every > 0) tick();
})();
