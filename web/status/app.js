// The status page: polls /status/data every second, turns the cumulative counts into rates
// and latency quantiles between two looks, and draws them with uPlot. The user lookup calls
// the admin API with the token typed in; nothing is stored beyond the tab.
'use strict';

const POINTS = 120;
const series = { time: [], ok: [], other: [], p50: [], p99: [] };
let previous = null;
const charts = {};
// Read by the browser test: how many polls have drawn data, and the last rates drawn.
window.licensegateStatus = { samples: 0, lastRate: 0 };

function cell(text, className) {
  const td = document.createElement('td');
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function row(...cells) {
  const tr = document.createElement('tr');
  cells.forEach((c) => tr.appendChild(c));
  return tr;
}

function fill(id, rows) {
  const body = document.getElementById(id);
  body.replaceChildren(...rows);
}

function time(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : '-';
}

// The q-quantile of the answers between two looks, as Prometheus' histogram_quantile reads
// buckets: linear within the bucket that holds the rank.
function quantile(q, bounds, counts) {
  const total = counts[counts.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (let i = 0; i < bounds.length; i++) {
    if (counts[i] >= rank) {
      const inBucket = counts[i] - below;
      const fraction = inBucket > 0 ? (rank - below) / inBucket : 1;
      return lower + (bounds[i] - lower) * fraction;
    }
    lower = bounds[i];
    below = counts[i];
  }
  return bounds[bounds.length - 1];
}

function makeChart(id, labels, colors, unit) {
  if (typeof uPlot === 'undefined') return null;
  const target = document.getElementById(id);
  const opts = {
    width: Math.max(target.clientWidth, 400),
    height: 200,
    series: [{}].concat(labels.map((label, i) => ({ label, stroke: colors[i], width: 2 }))),
    axes: [{}, { values: (u, ticks) => ticks.map((t) => t + unit) }],
  };
  return new uPlot(opts, [[], ...labels.map(() => [])], target);
}

function draw(now) {
  const at = now.time_ms / 1000;
  const m = now.metrics;
  if (previous) {
    const seconds = Math.max((now.time_ms - previous.time_ms) / 1000, 0.001);
    const before = previous.metrics;
    let ok = 0;
    let other = 0;
    for (const [outcome, count] of Object.entries(m.outcomes)) {
      const delta = count - (before.outcomes[outcome] || 0);
      if (outcome === 'ok' || outcome === 'service_certificate_cached' || outcome === 'preflight') ok += delta;
      else other += delta;
    }
    const deltas = m.latency_counts.map((c, i) => c - (before.latency_counts[i] || 0));
    const p50 = quantile(0.5, m.bounds, deltas);
    const p99 = quantile(0.99, m.bounds, deltas);
    series.time.push(at);
    series.ok.push(ok / seconds);
    series.other.push(other / seconds);
    series.p50.push(p50 === null ? null : p50 * 1000);
    series.p99.push(p99 === null ? null : p99 * 1000);
    for (const key of Object.keys(series)) {
      if (series[key].length > POINTS) series[key].shift();
    }
    if (charts.rate) charts.rate.setData([series.time, series.ok, series.other]);
    if (charts.latency) charts.latency.setData([series.time, series.p50, series.p99]);
    window.licensegateStatus.samples += 1;
    window.licensegateStatus.lastRate = (ok + other) / seconds;
    window.licensegateStatus.peakRate = Math.max(window.licensegateStatus.peakRate || 0, (ok + other) / seconds);
  }
  previous = now;

  fill('outcomes', Object.entries(m.outcomes).map(([outcome, count]) =>
    row(cell(outcome, outcome === 'ok' ? 'good' : 'bad'), cell(String(count), 'number'))));
  fill('endpoints', now.endpoints.map((e) =>
    row(cell(e.upstream), cell(String(e.healthy), e.healthy > 0 ? 'number good' : 'number bad'))));
  fill('ejections', Object.entries(m.ejections).map(([endpoint, count]) =>
    row(cell(endpoint), cell(String(count), 'number'))));
  const c = now.config;
  fill('config', [
    row(cell('generation'), cell(String(c.generation), 'number')),
    row(cell('loaded at'), cell(c.loaded_at)),
    row(cell('last reload error'), cell(c.last_error || 'none', c.last_error ? 'bad' : 'good')),
    row(cell('last error at'), cell(c.last_error_at || '-')),
  ]);
  document.getElementById('meta').textContent =
    `${now.draining ? 'draining' : 'serving'} · ${m.in_flight} in flight · updated ${new Date(now.time_ms).toLocaleTimeString()}`;
}

async function poll() {
  try {
    const response = await fetch('/status/data', { cache: 'no-store' });
    if (response.ok) draw(await response.json());
  } catch (e) {
    document.getElementById('meta').textContent = `licensegate unreachable: ${e}`;
  }
}

async function admin(method, path) {
  const token = document.getElementById('admin-token').value;
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.detail || body.title || `HTTP ${response.status}`);
  return body;
}

function freeButton(label, method, path) {
  const button = document.createElement('button');
  button.textContent = label;
  button.addEventListener('click', async () => {
    try {
      await admin(method, path);
      await lookup();
    } catch (e) {
      document.getElementById('lookup-status').textContent = e.message;
    }
  });
  const td = document.createElement('td');
  td.appendChild(button);
  return td;
}

async function lookup() {
  const user = document.getElementById('user').value.trim();
  const status = document.getElementById('lookup-status');
  const u = encodeURIComponent(user);
  status.textContent = '';
  try {
    const devices = await admin('GET', `/v1/devices/${u}`);
    fill('devices', devices.devices.map((slot) => row(
      cell(slot.device), cell(time(slot.last_seen)),
      freeButton('Free', 'DELETE', `/v1/devices/${u}/${encodeURIComponent(slot.device)}`))));
  } catch (e) {
    fill('devices', []);
    status.textContent = `devices: ${e.message}`;
  }
  try {
    const streams = await admin('GET', `/v1/users/${u}/streams`);
    fill('streams', streams.streams.filter((lease) => !lease.stopped).map((lease) => row(
      cell(lease.session), cell(lease.content), cell(time(lease.expires_at)),
      freeButton('End', 'DELETE', `/v1/users/${u}/streams/${encodeURIComponent(lease.session)}`))));
  } catch (e) {
    fill('streams', []);
    status.textContent += ` streams: ${e.message}`;
  }
}

document.getElementById('lookup').addEventListener('submit', (event) => {
  event.preventDefault();
  lookup();
});

if (typeof uPlot === 'undefined') {
  document.getElementById('notice').textContent =
    'Charts need the chart library: run npm ci in web/status (admin.status_root).';
}
charts.rate = makeChart('rate-chart', ['ok', 'refused or failed'], ['#1e7b34', '#b3261e'], '');
charts.latency = makeChart('latency-chart', ['p50', 'p99'], ['#2457c5', '#c56a24'], '');
poll();
setInterval(poll, 1000);
