// wattledger dashboard: one page over the /v1 API. No build step, no dependency but uPlot
// (vendored, served from /assets). The token lives in sessionStorage only and is sent to
// this server alone, in the Authorization header (the live feed is read with fetch, which
// can send it, rather than EventSource, which cannot).
(() => {
  'use strict';

  const TOKEN_KEY = 'wattledger.token';
  const HOUR_S = 3600;
  const DAY_MS = 86400e3;
  const REFRESH_DELAY_MS = 1500;
  const LIVE_BACKOFF_MAX_MS = 30e3;
  const TABLE_ROWS_MAX = 2000;

  const SOURCE_ORDER = ['nuclear', 'hydro', 'gas_turbine', 'wind', 'solar', 'grid', 'other', 'unspecified', 'unknown'];
  const SOURCE_LABEL = {
    gas_turbine: 'Gas turbines', solar: 'Solar', grid: 'Grid import', wind: 'Wind', hydro: 'Hydro',
    nuclear: 'Nuclear', other: 'Other', unspecified: 'Unspecified source', unknown: 'Unknown (no metered supply)',
  };
  const SOURCE_COLOR = {
    gas_turbine: '#e8793a', solar: '#f4c430', grid: '#5d6d7e', wind: '#48b5d8', hydro: '#1f77b4',
    nuclear: '#9467bd', other: '#a9a9a9', unspecified: '#c8c8c8', unknown: '#e3e3e3',
  };
  const TENANT_COLORS = ['#4e79a7', '#8e6bbf', '#d4589a', '#3b9ab2', '#5a5fd6', '#b5656b',
    '#2f4b7c', '#a05195', '#6f9bd1', '#c77dd8', '#397a7e', '#7b5ea7'];
  const DISCHARGE_COLOR = '#2eaf7d';
  const CHARGE_COLOR = '#97dcbc';
  const LOSSES_COLOR = '#c0c6cd';
  const READING_EVENTS = new Set(['EnergyGenerated', 'EnergyStored', 'EnergyDispatched', 'EnergyConsumed',
    'ReadingCorrected']);

  const $ = (id) => document.getElementById(id);

  // ----- state -----

  const st = {
    token: null,
    claims: null,
    mode: 'none', // 'operator' (operator or auditor token) | 'tenant' | 'none'
    sites: [],
    site: null,
    from: null, // Date
    to: null, // Date
    follow: true, // the range ends at the data's end and slides with live readings
    period: null,
    tenant: null,
    tenants: [],
    flows: null,
    balance: null,
    chart: null,
    chartKeys: '',
    chartView: null,
    attrChart: null,
    position: 0,
    loading: null, // AbortController of the loads in flight
    refreshTimer: null,
    liveFrom: null, // from the fragment: replay the live feed from this position
    live: { ctrl: null, lastId: null, events: 0, readings: 0, state: 'off', last: null },
  };

  // What the page shows, in one place a test (or a curious person) can read from the DOM.
  const summary = {
    state: 'idle', role: null, tenant_id: null, site: null, from: null, to: null,
    chart: { drawn: false, intervals: 0, width: 0, height: 0 },
    series: [], flagged: null, batteries: null, settlement: null, statement: null, holds: null, attribution: null,
    live: { state: 'off', events: 0, readings: 0, last_position: null }, errors: [],
  };
  function publish() {
    const el = $('dash-summary');
    el.dataset.state = summary.state;
    el.dataset.summary = JSON.stringify(summary);
  }

  // ----- small helpers -----

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('data-')) el.setAttribute(k, String(v));
      else el.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c == null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }
  function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); return el; }
  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const t = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
    });
  }

  /** Groups the integer part of an exact decimal string: "-1234567.5" → "-1,234,567.5". */
  function groupDecimal(s) {
    const str = String(s);
    const neg = str.startsWith('-');
    const [int, frac] = (neg ? str.slice(1) : str).split('.');
    const g = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
    return (neg ? '-' : '') + g + (frac ? '.' + frac : '');
  }

  /** An exact Wh decimal string as MWh with 3 decimals (to the kWh), rounded half away from zero. */
  function whToMWh(s) {
    const str = String(s).trim();
    const neg = str.startsWith('-');
    const [int, frac = ''] = (neg ? str.slice(1) : str).split('.');
    let milliWh = BigInt((int || '0') + frac.padEnd(3, '0').slice(0, 3));
    let kWh = milliWh / 1000000n;
    if (milliWh % 1000000n >= 500000n) kWh += 1n;
    const digits = kWh.toString().padStart(4, '0');
    const out = digits.slice(0, -3) + '.' + digits.slice(-3);
    return (neg && kWh !== 0n ? '-' : '') + groupDecimal(out);
  }

  function fmt(x, dp) {
    if (x == null || !Number.isFinite(x)) return '—';
    return x.toLocaleString('en-US', { minimumFractionDigits: dp, maximumFractionDigits: dp });
  }
  const fmtMW = (x) => fmt(x, 1) + ' MW';
  const num = (s) => (s == null ? 0 : Number(s)) || 0;

  function isoMinute(d) { return d.toISOString().slice(0, 16); }
  function isoSeconds(d) { return d.toISOString().replace(/\.\d{3}Z$/, 'Z'); }
  function fromInput(v) { const t = Date.parse(v + ':00Z'); return Number.isFinite(t) ? new Date(t) : null; }
  function utcLabel(iso) { return iso.replace('T', ' ').replace(/:00Z$/, '').replace(/Z$/, '') + ' UTC'; }
  function monthOf(d) { return d.toISOString().slice(0, 7); }
  function monthsBetween(from, to) {
    const out = [];
    const last = monthOf(new Date(to.getTime() - 1000));
    let y = from.getUTCFullYear();
    let m = from.getUTCMonth();
    for (let i = 0; i < 240; i++) {
      const p = `${y}-${String(m + 1).padStart(2, '0')}`;
      out.push(p);
      if (p >= last) break;
      m += 1;
      if (m === 12) { m = 0; y += 1; }
    }
    return out;
  }
  function titleCase(s) { return s.replace(/[_-]+/g, ' ').replace(/\b\w/g, (c) => c.toUpperCase()); }

  function decodeClaims(token) {
    try {
      const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(part.padEnd(Math.ceil(part.length / 4) * 4, '='));
      const bytes = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      return JSON.parse(new TextDecoder().decode(bytes));
    } catch (_) {
      return null;
    }
  }

  // ----- the API -----

  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(path, { signal, text } = {}) {
    let res;
    try {
      res = await fetch(path, {
        headers: { authorization: 'Bearer ' + st.token, accept: text ? 'text/csv' : 'application/json' },
        cache: 'no-store',
        signal,
      });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(0, { detail: 'the server did not answer (' + e.message + ')' });
    }
    if (!res.ok) {
      let problem = null;
      try { problem = await res.json(); } catch (_) { /* not JSON */ }
      throw new ApiError(res.status, problem);
    }
    return text ? res.text() : res.json();
  }

  function describe(e) {
    if (e instanceof ApiError) {
      if (e.status === 403) return 'Not available with this token (403): ' + e.message;
      if (e.status === 401) return 'The token was refused (401): ' + e.message;
      if (e.status === 0) return e.message;
      return `${e.status}: ${e.message}`;
    }
    return String(e && e.message || e);
  }

  function notice(text, kind) {
    const el = $('notice');
    if (!text) { el.hidden = true; return; }
    el.className = 'notice' + (kind === 'error' ? ' error' : kind === 'warn' ? ' warn' : '');
    el.textContent = text;
    el.hidden = false;
  }

  function panelError(el, e) {
    clear(el).append(h('p', { class: 'empty', text: describe(e) }));
    summary.errors.push(describe(e));
  }

  // ----- token -----

  function readFragment() {
    const out = {};
    const frag = location.hash.replace(/^#/, '');
    if (!frag) return out;
    for (const part of frag.split('&')) {
      const i = part.indexOf('=');
      if (i > 0) out[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
    }
    // The token must not stay in the address bar (or the history, or a bookmark).
    history.replaceState(null, '', location.pathname + location.search);
    return out;
  }

  function showWho() {
    const c = st.claims;
    const who = $('who');
    if (!st.token) { who.textContent = 'no token'; return; }
    if (!c) { who.textContent = 'token'; return; }
    let text = c.role || 'token';
    if (c.tenant_id) text += ' · ' + c.tenant_id;
    if (c.exp) {
      const left = c.exp * 1000 - Date.now();
      const at = new Date(c.exp * 1000).toISOString();
      const when = left < DAY_MS ? at.slice(11, 16) : `${at.slice(0, 10)} ${at.slice(11, 16)}`;
      text += left > 0 ? ` · expires ${when} UTC` : ' · expired';
    }
    who.textContent = text;
  }

  function forget() {
    sessionStorage.removeItem(TOKEN_KEY);
    stopLive();
    if (st.loading) st.loading.abort();
    st.token = null;
    st.claims = null;
    st.mode = 'none';
    destroyChart();
    for (const id of ['controls', 'operator-view', 'tenant-view']) $(id).hidden = true;
    $('welcome').hidden = false;
    notice(null);
    showWho();
    Object.assign(summary, { state: 'idle', role: null, tenant_id: null, series: [], statement: null, errors: [] });
    publish();
  }

  async function useToken(token) {
    stopLive();
    if (st.loading) st.loading.abort();
    st.token = token;
    st.claims = decodeClaims(token);
    summary.role = st.claims && st.claims.role || null;
    summary.tenant_id = st.claims && st.claims.tenant_id || null;
    summary.errors = [];
    summary.state = 'loading';
    publish();
    showWho();
    notice(null);
    $('welcome').hidden = true;
    if (st.claims && st.claims.exp && st.claims.exp * 1000 < Date.now()) {
      notice('This token has expired: mint a new one (wattledger token --role operator).', 'error');
    }
    let sites;
    try {
      sites = await api('/v1/sites');
    } catch (e) {
      if (e instanceof ApiError && e.status === 403 && st.claims && st.claims.tenant_id) {
        return startTenantView(st.claims.tenant_id);
      }
      notice(e instanceof ApiError && e.status === 403
        ? `A ${st.claims && st.claims.role || 'this'} token cannot read the dashboard: use an operator, auditor or tenant token.`
        : describe(e), 'error');
      summary.state = 'error';
      summary.errors.push(describe(e));
      publish();
      return;
    }
    st.mode = 'operator';
    startOperatorView(sites);
  }

  // ----- operator (and auditor) view -----

  function startOperatorView(sites) {
    st.sites = sites.sites || [];
    $('controls').hidden = false;
    $('operator-view').hidden = false;
    $('tenant-view').hidden = false;
    $('tenant-period-row').hidden = true;
    $('tenant').parentElement.hidden = false;
    const sel = clear($('site'));
    for (const s of st.sites) sel.append(h('option', { value: s.site_id, text: s.site_id }));
    if (!st.sites.length) {
      notice('No site is registered yet. Load the demo (wattledger serve --demo) or register one through the API.');
      summary.state = 'ready';
      publish();
      return;
    }
    const withData = st.sites.find((s) => s.data_to) || st.sites[0];
    st.site = withData.site_id;
    sel.value = st.site;
    setLatestRange();
    loadAll();
  }

  function currentSite() { return st.sites.find((s) => s.site_id === st.site) || null; }

  /** The last week of the site's data (or the last day before now, with none). */
  function setLatestRange() {
    const s = currentSite();
    const end = s && s.data_to ? new Date(s.data_to) : new Date(Math.floor(Date.now() / 900e3) * 900e3);
    const span = s && s.data_from ? Math.min(7 * DAY_MS, end - new Date(s.data_from)) : DAY_MS;
    st.to = end;
    st.from = new Date(end.getTime() - Math.max(span, 900e3));
    st.follow = true;
    showRange();
    choosePeriods();
  }

  function showRange() {
    $('from').value = isoMinute(st.from);
    $('to').value = isoMinute(st.to);
    const s = currentSite();
    $('site-info').textContent = s
      ? `${s.site_id}: time zone ${s.time_zone}, losses tolerated up to ${s.loss_tolerance_pct} % of supply; ` +
        (s.data_from ? `readings from ${utcLabel(s.data_from)} to ${utcLabel(s.data_to)}.` : 'no readings yet.')
      : '';
  }

  function choosePeriods() {
    const periods = monthsBetween(st.from, st.to);
    const sel = clear($('period'));
    for (const p of periods) sel.append(h('option', { value: p, text: p }));
    if (!periods.includes(st.period)) st.period = periods[periods.length - 1];
    sel.value = st.period;
  }

  function readControls() {
    const from = fromInput($('from').value);
    const to = fromInput($('to').value);
    if (!from || !to || from >= to) {
      notice('Pick a time range whose end is after its start.', 'error');
      return false;
    }
    notice(null);
    const s = currentSite();
    st.follow = !!(s && s.data_to && to.getTime() >= Date.parse(s.data_to));
    st.from = from;
    st.to = to;
    choosePeriods();
    st.period = $('period').value || st.period;
    st.tenant = $('tenant').value || st.tenant;
    return true;
  }

  async function loadAll({ quiet } = {}) {
    if (st.loading) st.loading.abort();
    const ctrl = new AbortController();
    st.loading = ctrl;
    const signal = ctrl.signal;
    if (!quiet) { summary.state = 'loading'; publish(); }
    summary.errors = [];
    const site = encodeURIComponent(st.site);
    const range = `from=${encodeURIComponent(isoSeconds(st.from))}&to=${encodeURIComponent(isoSeconds(st.to))}`;
    Object.assign(summary, { site: st.site, from: isoSeconds(st.from), to: isoSeconds(st.to) });
    const [flows, balance, storage, settlement] = await Promise.allSettled([
      api(`/v1/sites/${site}/flows?${range}`, { signal }),
      api(`/v1/sites/${site}/energy-balance?${range}`, { signal }),
      api('/v1/storage', { signal }),
      api(`/v1/settlements/${encodeURIComponent(st.period)}`, { signal }),
    ]);
    if (signal.aborted) return;
    st.balance = balance.status === 'fulfilled' ? balance.value : null;
    if (flows.status === 'fulfilled') {
      st.flows = flows.value;
      st.position = Math.max(st.position, flows.value.position || 0);
      renderFlows(flows.value, st.balance);
      chooseTenants(flows.value.tenants || []);
    } else {
      destroyChart();
      panelError($('kpis'), flows.reason);
    }
    if (balance.status === 'fulfilled') renderBalance(balance.value);
    else panelError($('flagged'), balance.reason);
    if (storage.status === 'fulfilled') renderStorage(storage.value);
    else panelError($('batteries'), storage.reason);
    if (settlement.status === 'fulfilled') renderSettlement(settlement.value);
    else panelError($('settlement'), settlement.reason);
    await loadStatement(st.tenant, st.period, signal);
    if (signal.aborted) return;
    summary.state = 'ready';
    publish();
    if (!st.live.ctrl) startLive(st.liveFrom != null ? st.liveFrom : st.position + 1);
  }

  function chooseTenants(list) {
    const known = new Map(st.tenants.map((t) => [t.tenant_id, t]));
    for (const t of list) known.set(t.tenant_id, t);
    st.tenants = [...known.values()].filter((t) => t.tenant_id !== 'unassigned')
      .sort((a, b) => a.tenant_id.localeCompare(b.tenant_id));
    const sel = clear($('tenant'));
    for (const t of st.tenants) {
      sel.append(h('option', { value: t.tenant_id, text: t.name ? `${t.name} (${t.tenant_id})` : t.tenant_id }));
    }
    if (!st.tenants.some((t) => t.tenant_id === st.tenant)) st.tenant = st.tenants.length ? st.tenants[0].tenant_id : null;
    if (st.tenant) sel.value = st.tenant;
  }

  // ----- the chart -----

  function tenantColor(i) {
    return i < TENANT_COLORS.length ? TENANT_COLORS[i] : `hsl(${(i * 47) % 360} 45% 50%)`;
  }

  /** The flows as chart layers: supply above zero, demand below, each stacked. */
  function layers(flows) {
    const iv = flows.intervals;
    const hours = flows.interval_s / HOUR_S;
    const mw = (wh) => num(wh) / hours / 1e6;
    const sources = [...(flows.sources || [])].sort(sourceOrder);
    const supply = sources.map((src) => ({
      key: 'generated:' + src, label: SOURCE_LABEL[src] || titleCase(src), color: SOURCE_COLOR[src] || '#a9a9a9',
      values: iv.map((i) => mw(i.generated_by_source_wh[src])),
    }));
    supply.push({ key: 'dispatched', label: 'Battery discharge', color: DISCHARGE_COLOR, values: iv.map((i) => mw(i.dispatched_wh)) });
    const demand = (flows.tenants || []).map((t, idx) => ({
      key: 'consumed:' + t.tenant_id, label: t.name || t.tenant_id, color: tenantColor(idx),
      values: iv.map((i) => -mw(i.consumed_by_tenant_wh[t.tenant_id])),
    }));
    demand.push({ key: 'stored', label: 'Battery charge', color: CHARGE_COLOR, values: iv.map((i) => -mw(i.stored_wh)) });
    demand.push({ key: 'losses', label: 'Losses', color: LOSSES_COLOR, values: iv.map((i) => -mw(i.losses_wh)) });
    return { xs: iv.map((i) => Date.parse(i.start) / 1000), supply, demand, hours };
  }

  function destroyChart() {
    if (st.chart) { st.chart.destroy(); st.chart = null; st.chartKeys = ''; }
    summary.chart = { drawn: false, intervals: 0, width: 0, height: 0 };
  }

  function renderFlows(flows, balance) {
    const L = layers(flows);
    renderKpis(flows, L, balance);
    const empty = L.xs.length === 0;
    $('chart-empty').hidden = !empty;
    if (flows.truncated) notice(`This range holds more intervals than one read returns: the chart shows the first ${L.xs.length}.`);
    // Stacks: each series is drawn at the cumulative sum of its layer and those nearer zero;
    // the innermost layer is filled to zero and every other one only as far as the layer
    // inside it (a uPlot band from the outer series towards the inner one: down above zero,
    // up below it). The series are listed as they appear from the top of the chart down,
    // and the legend shows each layer's own value, not the sum.
    const supply = stackUp(L.supply, L.hours);
    const demand = stackUp(L.demand, L.hours);
    const drawn = [...supply.slice().reverse(), ...demand];
    const index = new Map(drawn.map((s, i) => [s.key, i + 1]));
    const bands = [...stackBands(supply, index, -1), ...stackBands(demand, index, 1)];
    summary.series = drawn.map((s) => ({
      key: s.key,
      label: s.label,
      points: s.values.filter((v) => Number.isFinite(v)).length,
      nonzero: s.values.filter((v) => Math.abs(v) > 1e-9).length,
      total_mwh: Math.round(s.total * 1000) / 1000,
    }));
    publish();
    if (empty) { destroyChart(); return; }
    const data = [L.xs, ...drawn.map((s) => s.cum)];
    const keys = drawn.map((s) => s.key).join('|');
    const flagged = new Set(((balance && balance.intervals) || []).filter((i) => i.flagged).map((i) => Date.parse(i.start) / 1000));
    const interval = flows.interval_s;
    // What the legend and the draw hook read (kept outside the chart, which reads them
    // while it is being built, and again after each update).
    st.chartView = { raw: drawn.map((s) => s.values), totals: drawn.map((s) => s.total), flagged };
    if (st.chart && st.chartKeys === keys) {
      st.chart.setData(data);
      return;
    }
    destroyChart();
    const el = clear($('chart'));
    const width = Math.max(480, el.clientWidth || 1200);
    const opts = {
      width,
      height: 420,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
      cursor: { drag: { x: true, y: false } },
      scales: { x: { time: true } },
      legend: { live: true },
      axes: [
        {
          stroke: '#5f6b7a', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#e2e7ee' },
          // [tick step, format, then the line added when the year, month, day, … changes]
          values: [
            [86400, '{MMM} {D}', '\n{YYYY}', null, null, null, null, null, 1],
            [3600, '{HH}:{mm}', '\n{MMM} {D} {YYYY}', null, '\n{MMM} {D}', null, null, null, 1],
            [60, '{HH}:{mm}', '\n{MMM} {D} {YYYY}', null, '\n{MMM} {D}', null, null, null, 1],
          ],
        },
        {
          stroke: '#5f6b7a', grid: { stroke: '#eef1f5' }, ticks: { stroke: '#e2e7ee' }, size: 64,
          label: 'MW (average power)', labelSize: 18,
          values: (u, vals) => vals.map((v) => fmt(Math.abs(v), 0)),
        },
      ],
      bands,
      series: [
        {
          label: 'Time (UTC)',
          // Without a cursor over the chart, the legend gives each layer's energy in the range.
          value: (u, v) => (v == null ? 'whole range' : new Date(v * 1e3).toISOString().slice(0, 16).replace('T', ' ')),
        },
        ...drawn.map((s, i) => ({
          label: s.label,
          stroke: shade(s.color),
          width: 1,
          fill: s.color,
          fillTo: 0,
          points: { show: false },
          value: (u, v, si, di) => (di == null
            ? `${fmt(st.chartView.totals[i], 1)} MWh`
            : fmtMW(Math.abs(st.chartView.raw[i][di]))),
        })),
      ],
      hooks: {
        draw: [(u) => {
          drawFlagged(u, interval);
          drawCaptions(u);
          summary.chart = { drawn: true, intervals: u.data[0].length, width: u.width, height: u.height };
          publish();
        }],
      },
    };
    st.chart = new uPlot(opts, data, el);
    st.chartKeys = keys;
  }

  /** Stacks layers outward from zero: each keeps its own `values`, and gets `cum` (the sum
   * of it and the layers nearer zero, what is drawn) and `total` (MWh over the range, from
   * MW values of `hours`-long steps). */
  function stackUp(list, hours) {
    const acc = list.length ? list[0].values.map(() => 0) : [];
    return list.map((s) => ({
      ...s,
      cum: s.values.map((v, i) => (acc[i] += v)),
      total: Math.abs(s.values.reduce((a, v) => a + v, 0)) * hours,
    }));
  }

  /** uPlot bands filling each stacked layer only as far as the layer inside it (`dir` -1
   * above zero, 1 below). */
  function stackBands(stacked, index, dir) {
    const bands = [];
    stacked.forEach((s, k) => {
      if (k > 0) bands.push({ series: [index.get(s.key), index.get(stacked[k - 1].key)], fill: s.color, dir });
    });
    return bands;
  }

  function sourceOrder(a, b) {
    const ia = SOURCE_ORDER.indexOf(a);
    const ib = SOURCE_ORDER.indexOf(b);
    return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || a.localeCompare(b);
  }

  /** A darker edge for a layer's fill. */
  function shade(color) {
    const m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    const n = parseInt(m[1], 16);
    const c = (x) => Math.round(((n >> x) & 255) * 0.78);
    return `rgb(${c(16)}, ${c(8)}, ${c(0)})`;
  }

  /** Names the two halves of the chart. */
  function drawCaptions(u) {
    const ctx = u.ctx;
    const px = window.devicePixelRatio || 1;
    ctx.save();
    ctx.font = `600 ${11 * px}px sans-serif`;
    ctx.fillStyle = 'rgba(29, 39, 51, 0.55)';
    ctx.textAlign = 'left';
    ctx.textBaseline = 'top';
    ctx.fillText('SUPPLY ↑', u.bbox.left + 8 * px, u.bbox.top + 6 * px);
    ctx.textBaseline = 'bottom';
    ctx.fillText('DEMAND ↓', u.bbox.left + 8 * px, u.bbox.top + u.bbox.height - 6 * px);
    ctx.restore();
  }

  /** Shades the intervals whose conservation check failed. */
  function drawFlagged(u, interval) {
    const flagged = st.chartView && st.chartView.flagged;
    if (!flagged || !flagged.size) return;
    const ctx = u.ctx;
    ctx.save();
    const px = window.devicePixelRatio || 1;
    for (const t of flagged) {
      const x0 = u.valToPos(t, 'x', true);
      const x1 = u.valToPos(t + interval, 'x', true);
      ctx.fillStyle = 'rgba(198, 40, 40, 0.22)';
      ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
      // A mark on the top edge, wide enough to see when one interval is a pixel wide.
      ctx.fillStyle = '#c62828';
      const w = Math.max(4 * px, x1 - x0);
      ctx.fillRect((x0 + x1) / 2 - w / 2, u.bbox.top, w, 6 * px);
    }
    ctx.restore();
  }

  function renderKpis(flows, L, balance) {
    const iv = flows.intervals;
    const sumOf = (f) => iv.reduce((a, i) => a + num(f(i)), 0) / 1e6;
    const gen = sumOf((i) => i.generated_wh);
    const dis = sumOf((i) => i.dispatched_wh);
    const sto = sumOf((i) => i.stored_wh);
    const con = sumOf((i) => i.consumed_wh);
    const los = sumOf((i) => i.losses_wh);
    const supply = gen + dis;
    const peak = iv.reduce((a, i) => Math.max(a, num(i.consumed_wh) / L.hours / 1e6), 0);
    const mix = L.supply.filter((s) => s.key.startsWith('generated:')).map((s) => {
      const total = s.values.reduce((a, v) => a + v, 0) * L.hours;
      return `${s.label.toLowerCase()} ${gen > 0 ? fmt((total / gen) * 100, 0) : 0} %`;
    }).join(' · ');
    const flagged = balance ? balance.flagged_count : null;
    const kpi = (k, v, unit, s, cls) => h('div', { class: 'kpi' + (cls ? ' ' + cls : '') },
      h('div', { class: 'k', text: k }), h('div', { class: 'v' }, v, unit ? h('small', { text: unit }) : null),
      h('div', { class: 's', text: s || '' }));
    clear($('kpis')).append(
      kpi('Generation', fmt(gen, 1), 'MWh', mix),
      kpi('Consumption', fmt(con, 1), 'MWh', `peak ${fmtMW(peak)} · ${(flows.tenants || []).length} tenants`),
      kpi('Battery', fmt(dis, 1), 'MWh out', `${fmt(sto, 1)} MWh charged`),
      kpi('Losses', fmt(los, 1), 'MWh', supply > 0 ? `${fmt((los / supply) * 100, 2)} % of supply` : ''),
      kpi('Conservation', flagged == null ? '—' : String(flagged), flagged === 1 ? 'interval flagged' : 'intervals flagged',
        `${iv.length} intervals checked`, flagged ? 'bad' : flagged === 0 ? 'good' : ''),
    );
  }

  // ----- panels -----

  function table(head, rows, numeric) {
    const t = h('table', {},
      h('thead', {}, h('tr', {}, head.map((c, i) => h('th', { class: numeric.includes(i) ? 'num' : null, text: c })))));
    const body = h('tbody');
    for (const r of rows.slice(0, TABLE_ROWS_MAX)) {
      const tr = h('tr', { class: r.cls || null });
      r.cells.forEach((c, i) => {
        const td = h('td', { class: numeric.includes(i) ? 'num' : null });
        td.append(c instanceof Node ? c : document.createTextNode(c == null ? '' : String(c)));
        tr.append(td);
      });
      body.append(tr);
    }
    t.append(body);
    return t;
  }

  function renderBalance(b) {
    const flagged = b.intervals.filter((i) => i.flagged);
    summary.flagged = { count: b.flagged_count, intervals: b.intervals.length };
    $('balance-summary').textContent = `${b.intervals.length} intervals of ${b.interval_s / 60} minutes; ` +
      `losses tolerated up to ${b.loss_tolerance_pct} % of supply.`;
    const el = clear($('flagged'));
    if (!flagged.length) {
      el.append(h('p', { class: 'ok-note', text: b.intervals.length
        ? `Every interval balances: supply = storage + consumption + losses within ${b.loss_tolerance_pct} %.`
        : 'No readings in this range.' }));
      return;
    }
    el.append(table(['Interval (UTC)', 'Supply MWh', 'Demand MWh', 'Losses MWh', 'Losses %', 'Why flagged'],
      flagged.map((i) => ({
        cls: 'bad',
        cells: [utcLabel(i.start), fmt((num(i.generated_wh) + num(i.dispatched_wh)) / 1e6, 3),
          fmt((num(i.stored_wh) + num(i.consumed_wh)) / 1e6, 3), fmt(num(i.losses_wh) / 1e6, 3),
          i.losses_pct == null ? '—' : i.losses_pct, i.reason || ''],
      })), [1, 2, 3, 4]));
  }

  function renderStorage(s) {
    const list = (s.batteries || []).filter((b) => b.site_id === st.site);
    const el = clear($('batteries'));
    let level = 0;
    let cap = 0;
    for (const b of list) {
      const lv = num(b.level_wh);
      const c = num(b.capacity_wh);
      level += lv;
      cap += c;
      const pct = c > 0 ? Math.max(0, Math.min(100, (lv / c) * 100)) : 0;
      const bar = h('div', { class: 'bar' + (pct < 20 ? ' low' : ''), title: `${fmt(pct, 0)} %` }, h('span'));
      bar.firstChild.style.width = pct.toFixed(1) + '%';
      el.append(h('div', { class: 'batt', 'data-asset': b.asset_id, 'data-level-wh': b.level_wh },
        h('div', { class: 'row' }, h('span', { class: 'id', text: b.asset_id }),
          h('span', { class: 'pct', text: `${fmt(pct, 0)} %` })),
        bar,
        h('div', { class: 'amt', text: `${whToMWh(b.level_wh)} of ${whToMWh(b.capacity_wh)} MWh` })));
    }
    if (!list.length) el.append(h('p', { class: 'empty', text: 'No battery at this site.' }));
    summary.batteries = { count: list.length, level_mwh: Math.round(level / 1e3) / 1e3 };
    $('storage-total').textContent = list.length
      ? `${list.length} batteries hold ${fmt(level / 1e6, 2)} of ${fmt(cap / 1e6, 2)} MWh (${fmt(cap ? (level / cap) * 100 : 0, 0)} %), now.`
      : '';
  }

  function renderSettlement(s) {
    $('settlement-period').textContent = s.period;
    $('settlement-summary').textContent = `${s.accounts.length} accounts · nets sum to ${groupDecimal(s.sum_eu)} EU and ` +
      `${groupDecimal(s.sum_wh)} Wh · ${s.final ? 'final (the period is closed)' : 'provisional (the period is open)'}`;
    summary.settlement = { period: s.period, accounts: s.accounts.length, sum_eu: s.sum_eu, final: s.final };
    const rows = s.accounts.map((a) => ({
      cells: [a.account, groupDecimal(a.net_eu), whToMWh(a.net_wh)],
    }));
    rows.push({ cls: 'sum', cells: ['Sum (debit-positive)', groupDecimal(s.sum_eu), whToMWh(s.sum_wh)] });
    clear($('settlement')).append(table(['Account', 'Net EU', 'Net MWh'], rows, [1, 2]));
  }

  const TOTALS = [
    ['opening_balance_eu', 'Opening balance', 'EU'],
    ['charges_eu', 'Charges', 'EU'],
    ['credits_eu', 'Credits issued', 'EU'],
    ['transfers_in_eu', 'Transfers in', 'EU'],
    ['transfers_out_eu', 'Transfers out', 'EU'],
    ['adjustments_eu', 'Adjustments', 'EU'],
    ['closing_balance_eu', 'Closing balance', 'EU'],
    ['consumption_wh', 'Consumption', 'MWh'],
  ];

  async function loadStatement(tenant, period, signal) {
    const lines = $('statement-lines');
    if (!tenant || !period) {
      clear($('statement-totals'));
      clear(lines).append(h('p', { class: 'empty', text: 'No tenant consumed energy in this range.' }));
      summary.statement = null;
      return;
    }
    $('statement-title').textContent = `${tenant} · ${period}`;
    const path = `/v1/tenants/${encodeURIComponent(tenant)}/statements/${encodeURIComponent(period)}`;
    const [stmt, account, holds, attribution] = await Promise.allSettled([
      api(path, { signal }),
      api(`/v1/accounts/${encodeURIComponent('tenant:' + tenant)}`, { signal }),
      api(`/v1/tenants/${encodeURIComponent(tenant)}/holds?status=active`, { signal }),
      api(`/v1/tenants/${encodeURIComponent(tenant)}/attribution/${encodeURIComponent(period)}`, { signal }),
    ]);
    if (signal && signal.aborted) return;
    $('tenant-balance').textContent = account.status === 'fulfilled'
      ? `Holding now: ${groupDecimal(account.value.balance_eu)} EU in total · ` +
        `${groupDecimal(account.value.held_eu || '0')} EU on hold · ` +
        `${groupDecimal(account.value.available_eu || account.value.balance_eu)} EU available` : '';
    renderHolds(holds.status === 'fulfilled' ? holds.value : null);
    if (stmt.status === 'rejected') {
      clear($('statement-totals'));
      panelError(lines, stmt.reason);
      summary.statement = { tenant_id: tenant, period, error: describe(stmt.reason) };
      return;
    }
    renderStatement(stmt.value);
    if (attribution.status === 'fulfilled') renderAttribution(attribution.value);
    else {
      $('attribution').hidden = false;
      panelError($('attribution-kpis'), attribution.reason);
      summary.attribution = { tenant_id: tenant, period, error: describe(attribution.reason) };
      publish();
    }
  }

  /** The tenant's hourly consumption by source: KPIs and a stacked chart. */
  function renderAttribution(a) {
    $('attribution').hidden = false;
    const byHour = new Map();
    for (const x of a.hours) {
      const t = Date.parse(x.hour) / 1000;
      const m = byHour.get(t) || {};
      for (const [src, wh] of Object.entries(x.by_source_wh)) m[src] = (m[src] || 0) + num(wh);
      byHour.set(t, m);
    }
    const xs = [...byHour.keys()].sort((p, q) => p - q);
    const sources = Object.keys(a.by_source_wh).sort(sourceOrder);
    const layers = sources.map((src) => ({
      key: src, label: SOURCE_LABEL[src] || titleCase(src), color: SOURCE_COLOR[src] || '#a9a9a9',
      values: xs.map((t) => (byHour.get(t)[src] || 0) / 1e6),
    }));
    const stacked = stackUp(layers, 1);
    const pct = (s) => (s == null ? '–' : fmt(num(s) * 100, 1));
    const kpis = [
      ['Consumption', whToMWh(a.consumption_wh), 'MWh'],
      ['Carbon', fmt(num(a.carbon_kg) / 1000, 2), 't CO2e'],
      ['Carbon-free share', pct(a.carbon_free_share), '%'],
      ['Hourly carbon-free score', pct(a.hourly_cfe_score), '%'],
      ['Hours flagged', String(a.flagged_hours), 'h'],
    ];
    const grid = clear($('attribution-kpis'));
    for (const [label, text, unit] of kpis) {
      grid.append(h('div', { class: 'total' },
        h('div', { class: 'k', text: label }),
        h('div', { class: 'v' }, h('span', { class: 'n', text }), h('small', { text: unit }))));
    }
    $('attribution-method').textContent = `Method: ${a.method}. Readings at positions ${a.first_position}–${a.last_position}.`;
    summary.attribution = {
      tenant_id: a.tenant_id, period: a.period, hours: xs.length, sources,
      carbon_kg: a.carbon_kg, carbon_free_share: a.carbon_free_share, hourly_cfe_score: a.hourly_cfe_score,
      chart: { drawn: false, points: 0 },
    };
    publish();
    if (st.attrChart) { st.attrChart.destroy(); st.attrChart = null; }
    const el = clear($('attribution-chart'));
    if (!xs.length) {
      el.append(h('p', { class: 'empty', text: 'No consumption in this period.' }));
      return;
    }
    const drawn = stacked.slice().reverse();
    const index = new Map(drawn.map((s, i) => [s.key, i + 1]));
    st.attrChart = new uPlot({
      width: Math.max(480, el.clientWidth || 1200),
      height: 300,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), 'Etc/UTC'),
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.05 : 1] } },
      axes: [
        { stroke: '#5f6b7a', grid: { stroke: '#eef1f5' } },
        { stroke: '#5f6b7a', grid: { stroke: '#eef1f5' }, size: 64, label: 'MWh per hour', labelSize: 18 },
      ],
      bands: stackBands(stacked, index, -1),
      series: [
        { label: 'Hour (UTC)', value: (u, v) => (v == null ? 'whole period' : new Date(v * 1e3).toISOString().slice(0, 13).replace('T', ' ') + ':00') },
        ...drawn.map((s) => ({
          label: s.label, stroke: shade(s.color), width: 1, fill: s.color, fillTo: 0, points: { show: false },
          value: (u, v, si, di) => (di == null ? `${fmt(s.total, 1)} MWh` : `${fmt(s.values[di], 2)} MWh`),
        })),
      ],
      hooks: {
        draw: [(u) => {
          summary.attribution.chart = { drawn: true, points: u.data[0].length };
          publish();
        }],
      },
    }, [xs, ...drawn.map((s) => s.cum)], el);
  }

  /** The tenant's active holds: what is reserved, for which job, and until when. */
  function renderHolds(list) {
    const panel = $('holds-panel');
    if (!list) {
      panel.hidden = true;
      summary.holds = null;
      return;
    }
    panel.hidden = false;
    const limits = list.spending_limits || [];
    const limit = limits.length ? limits[limits.length - 1] : null;
    $('holds-summary').textContent = `${list.active_holds} active · ${groupDecimal(list.held_eu)} EU held of ` +
      `${groupDecimal(list.balance_eu)} EU · ${groupDecimal(list.available_eu)} EU available` +
      (limit ? ` · spending limit ${limit.limit_eu == null ? 'none' : groupDecimal(limit.limit_eu) + ' EU'} from ${limit.period}` : '');
    summary.holds = { active: list.active_holds, held_eu: list.held_eu, available_eu: list.available_eu, balance_eu: list.balance_eu };
    const el = clear($('holds'));
    if (!list.holds.length) {
      el.append(h('p', { class: 'empty', text: 'No active hold.' }));
      return;
    }
    el.append(table(['Hold', 'Job', 'Reserved EU', 'Used EU', 'Left EU', 'Expires (UTC)'],
      list.holds.map((x) => ({
        cells: [x.hold_id, x.job_id || '', groupDecimal(x.amount_eu),
          groupDecimal(String(num(x.captured_eu) + num(x.drawn_eu))), groupDecimal(x.remaining_eu), utcLabel(x.expires_at)],
      })), [2, 3, 4]));
  }

  function renderStatement(s) {
    const badge = $('statement-final');
    badge.textContent = s.final ? 'final' : 'provisional';
    badge.className = 'badge ' + (s.final ? 'final' : 'open');
    $('statement-title').textContent = `${s.tenant_name} (${s.tenant_id}) · ${s.period}`;
    const totals = {};
    const grid = clear($('statement-totals'));
    for (const [field, label, unit] of TOTALS) {
      const raw = s[field];
      const text = unit === 'MWh' ? whToMWh(raw) : groupDecimal(raw);
      totals[field] = { value: raw, text };
      grid.append(h('div', { class: 'total' + (field === 'closing_balance_eu' ? ' closing' : ''), 'data-field': field, 'data-value': raw },
        h('div', { class: 'k', text: label }),
        h('div', { class: 'v' }, h('span', { class: 'n', text }), h('small', { text: unit }))));
    }
    const rows = s.lines.map((l) => ({
      cells: [h('span', { class: 'kind ' + l.kind, text: l.kind.replace('_', ' ') }), l.date || '', l.band || '',
        l.energy_wh == null ? '' : whToMWh(l.energy_wh), groupDecimal(l.amount_eu),
        [l.memo, l.counterparty && `with ${l.counterparty}`, l.original_period && `for ${l.original_period}`]
          .filter(Boolean).join(' · ')],
    }));
    const lines = clear($('statement-lines'));
    if (rows.length) lines.append(table(['Kind', 'Date', 'Band', 'MWh', 'EU', 'Memo'], rows, [3, 4]));
    else lines.append(h('p', { class: 'empty', text: 'Nothing was booked to this tenant in this period.' }));
    $('statement-chain').textContent = s.last_position
      ? `Positions ${s.first_position}–${s.last_position} · chain hash at ${s.last_position}: ${s.chain_hash}` : '';
    summary.statement = { tenant_id: s.tenant_id, period: s.period, final: s.final, lines: s.lines.length, totals };
    publish();
  }

  async function downloadCsv() {
    const tenant = st.mode === 'tenant' ? st.claims.tenant_id : st.tenant;
    const period = st.mode === 'tenant' ? $('tenant-period').value : st.period;
    if (!tenant || !period) return;
    try {
      const text = await api(`/v1/tenants/${encodeURIComponent(tenant)}/statements/${encodeURIComponent(period)}?format=csv`, { text: true });
      const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
      const a = h('a', { href: url, download: `statement-${tenant}-${period}.csv` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10e3);
    } catch (e) {
      notice(describe(e), 'error');
    }
  }

  // ----- tenant view -----

  async function startTenantView(tenant) {
    st.mode = 'tenant';
    st.tenant = tenant;
    $('controls').hidden = true;
    $('operator-view').hidden = true;
    $('tenant-view').hidden = false;
    $('tenant-period-row').hidden = false;
    notice(`Signed in as tenant ${tenant}: a tenant token reads its own statement and account only ` +
      '(the site panels need an operator or auditor token).');
    setLive('off', 'operators only');
    const now = new Date();
    const periods = [];
    for (let i = 0; i < 13; i++) {
      const d = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth() - i, 1));
      periods.push(monthOf(d));
    }
    const sel = clear($('tenant-period'));
    for (const p of periods) sel.append(h('option', { value: p, text: p }));
    // The latest period with anything booked (the demo's week may end on the 1st).
    let period = periods[0];
    try {
      const s = await api(`/v1/tenants/${encodeURIComponent(tenant)}/statements/${periods[0]}`);
      if (!s.last_position) period = periods[1];
    } catch (_) { /* loadStatement says why */ }
    sel.value = period;
    st.period = period;
    await loadStatement(tenant, period);
    summary.state = 'ready';
    publish();
  }

  // ----- live events -----

  function setLive(state, text) {
    st.live.state = state;
    const el = $('live');
    el.className = 'live ' + state;
    $('live-text').textContent = text;
    summary.live = { state, events: st.live.events, readings: st.live.readings, last_position: st.live.lastId };
    publish();
  }

  function stopLive() {
    if (st.live.ctrl) st.live.ctrl.abort();
    st.live = { ctrl: null, lastId: null, events: 0, readings: 0, state: 'off', last: null };
    setLive('off', 'offline');
  }

  /** Reads `/v1/events/live` with fetch (so the token goes in the header), reconnecting from
   * the last event seen with `Last-Event-ID`. */
  async function startLive(fromPosition) {
    if (st.live.ctrl) st.live.ctrl.abort();
    const ctrl = new AbortController();
    st.live.ctrl = ctrl;
    let backoff = 1000;
    while (!ctrl.signal.aborted) {
      try {
        const headers = { authorization: 'Bearer ' + st.token, accept: 'text/event-stream' };
        let url = '/v1/events/live';
        if (st.live.lastId != null) headers['last-event-id'] = String(st.live.lastId);
        else url += '?from_position=' + Math.max(1, fromPosition);
        const res = await fetch(url, { headers, cache: 'no-store', signal: ctrl.signal });
        if (res.status === 401 || res.status === 403) {
          setLive('err', res.status === 403 ? 'not allowed' : 'token refused');
          return;
        }
        if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
        setLive('on', 'live');
        backoff = 1000;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n/g, '\n');
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            onFrame(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
        if (!ctrl.signal.aborted) setLive('err', 'reconnecting');
      } catch (e) {
        if (ctrl.signal.aborted) return;
        setLive('err', 'reconnecting');
      }
      await sleep(backoff, ctrl.signal);
      backoff = Math.min(backoff * 2, LIVE_BACKOFF_MAX_MS);
    }
  }

  function onFrame(frame) {
    let id = null;
    let type = 'message';
    const data = [];
    for (const line of frame.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
      if (field === 'id') id = value;
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (!data.length) return;
    let rec;
    try { rec = JSON.parse(data.join('\n')); } catch (_) { return; }
    if (id != null && /^\d+$/.test(id)) st.live.lastId = Number(id);
    st.live.events += 1;
    const ev = rec.data || {};
    if (READING_EVENTS.has(type) && ev.site_id === st.site) {
      st.live.readings += 1;
      const end = Date.parse(ev.end);
      // Follow the newest data: slide the range forward to include it.
      if (st.follow && Number.isFinite(end) && end > st.to.getTime()) {
        const shift = end - st.to.getTime();
        st.to = new Date(end);
        st.from = new Date(st.from.getTime() + shift);
        const s = currentSite();
        if (s) s.data_to = isoSeconds(st.to);
        showRange();
        choosePeriods();
      }
      const wh = ev.energy_wh || ev.delta_wh;
      $('live-text').textContent = `live · #${rec.position}`;
      $('live').title = `Latest: ${ev.meter_id} ${ev.flow} ${wh != null ? whToMWh(wh) + ' MWh' : ''} ` +
        `${utcLabel(ev.start || '')} (position ${rec.position})`;
      scheduleRefresh();
    } else if (type.startsWith('Credits') || type.startsWith('Hold') || type.startsWith('SpendingLimit') ||
      type === 'PeriodClosed' || type === 'TenantRegistered') {
      if (type === 'SpendingLimitExceeded') {
        notice(`Tenant ${ev.tenant_id} went past its spending limit of ${groupDecimal(ev.limit_eu)} EU in ${ev.period} ` +
          `(${groupDecimal(ev.charged_eu)} EU charged).`, 'warn');
      }
      scheduleRefresh();
    }
    summary.live = { state: st.live.state, events: st.live.events, readings: st.live.readings, last_position: st.live.lastId };
    publish();
  }

  function scheduleRefresh() {
    if (st.refreshTimer || st.mode !== 'operator') return;
    st.refreshTimer = setTimeout(() => {
      st.refreshTimer = null;
      loadAll({ quiet: true });
    }, REFRESH_DELAY_MS);
  }

  // ----- wiring -----

  function wire() {
    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const input = $('token-input');
      const token = input.value.trim().replace(/^Bearer\s+/i, '');
      input.value = '';
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
      useToken(token);
    });
    $('forget').addEventListener('click', forget);
    $('site').addEventListener('change', () => {
      st.site = $('site').value;
      setLatestRange();
      loadAll();
    });
    $('reload').addEventListener('click', () => { if (readControls()) loadAll(); });
    $('latest').addEventListener('click', () => { setLatestRange(); loadAll(); });
    $('period').addEventListener('change', () => { st.period = $('period').value; loadAll(); });
    $('tenant').addEventListener('change', () => {
      st.tenant = $('tenant').value;
      loadStatement(st.tenant, st.period).then(publish);
    });
    $('tenant-period').addEventListener('change', () => {
      st.period = $('tenant-period').value;
      loadStatement(st.tenant, st.period).then(publish);
    });
    $('statement-csv').addEventListener('click', downloadCsv);
    let resizeTimer = null;
    window.addEventListener('resize', () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        if (st.chart) st.chart.setSize({ width: Math.max(480, $('chart').clientWidth), height: 420 });
      }, 150);
    });
  }

  function start() {
    wire();
    const frag = readFragment();
    if (frag.token) sessionStorage.setItem(TOKEN_KEY, frag.token);
    if (frag.live_from && /^\d+$/.test(frag.live_from)) st.liveFrom = Number(frag.live_from);
    const token = sessionStorage.getItem(TOKEN_KEY);
    publish();
    if (token) useToken(token);
  }

  start();
})();
