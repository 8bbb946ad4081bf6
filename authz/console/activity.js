// Live decision rates: polls GET /v1/stats every two seconds while shown, and draws allowed,
// denied and over-limit calls per second over the last two minutes.

import { call } from './api.js';
import { fill, h, notice, s } from './dom.js';
import { linePoints, perSecondText, rates, remember, totals } from './rates.js';

const POLL_MS = 2000;
const HISTORY = 60;
const LINES = [
  { key: 'allow', label: 'Allowed' },
  { key: 'deny', label: 'Denied' },
  { key: 'rateLimited', label: 'Over limit (429)' },
];

export async function activityView(main, signal) {
  const msg = notice();
  const cards = h('div', { class: 'stat-row' });
  const graph = h('div', { class: 'card' });
  const reasons = h('section', { class: 'card' });
  const limits = h('section', { class: 'card' });
  const note = h('p', { class: 'muted note' });
  fill(
    main,
    h('div', { class: 'heading' }, h('h1', { text: 'Activity' }), h('span', { class: 'muted', text: 'Check decisions of this tollgate-authz process, every 2 s' })),
    msg.el,
    cards,
    note,
    graph,
    reasons,
    limits,
  );
  let prev = null;
  let history = [];
  while (!signal.aborted) {
    try {
      const cur = totals(await call('GET', '/v1/stats'));
      msg.clear();
      const r = prev ? rates(prev, cur) : null;
      if (r) history = remember(history, r, HISTORY);
      note.textContent = cur.singleCall
        ? 'Single-call mode: tollgate-authz counts the limits itself, so a call over a limit is in Over limit only.'
        : 'tollgate-authz allows a call before the rate limit counts it, so a call over a limit is in Allowed too.';
      draw({ cards, graph, reasons, limits }, cur, r, history);
      prev = cur;
    } catch (e) {
      if (signal.aborted) return;
      msg.show(e.message);
      if (e.status === 401) return;
    }
    await pause(POLL_MS, signal);
  }
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });
}

function draw(parts, cur, r, history) {
  const stat = (label, rate, total, cls) =>
    h('div', { class: `stat ${cls}` }, h('span', { class: 'label', text: label }), h('strong', { text: r ? perSecondText(rate) : '…' }), h('span', { class: 'muted', text: total === null ? 'not reported' : `${total} since start` }));
  fill(
    parts.cards,
    stat('Allowed', r?.allow, cur.allow, 'line-allow'),
    stat('Denied', r?.deny, cur.deny, 'line-deny'),
    stat('Over limit (429)', r?.rateLimited, cur.rateLimited, 'line-rateLimited'),
  );
  fill(parts.graph, h('h2', { text: 'Calls per second, last two minutes' }), sparkGraph(history));
  fill(
    parts.reasons,
    h('h2', { text: 'Denied, by reason' }),
    table(['Reason', 'Per second', 'Since start'], Object.entries(cur.denyByReason).sort((a, b) => b[1] - a[1]).map(([reason, total]) => [reason, r ? perSecondText(r.denyByReason[reason] ?? 0) : '…', total]), 'No denials yet.'),
  );
  fill(parts.limits, h('h2', { text: 'Over limit, by limit' }), ...limitsPart(cur, r));
}

function limitsPart(cur, r) {
  if (cur.rateLimitError) return [h('p', { class: 'notice notice-error', text: cur.rateLimitError })];
  if (cur.rateLimited === null) {
    return [h('p', { class: 'muted', text: '429s are decided by tollgate-ratelimit. Set admin.ratelimit_metrics_url to its /metrics to see them here.' })];
  }
  const source = cur.singleCall ? 'From the rate limits of this tollgate-authz' : 'From tollgate-ratelimit';
  return [
    h('p', { class: 'muted', text: `${source}: over-limit answers per limit (a request over two limits counts in both).` }),
    table(['Limit', 'Per second', 'Since start'], Object.entries(cur.byLimit).sort((a, b) => b[1] - a[1]).map(([name, total]) => [name, r ? perSecondText(r.byLimit[name] ?? 0) : '…', total]), 'Nothing over a limit yet.'),
  ];
}

function table(head, rows, empty) {
  if (rows.length === 0) return h('p', { class: 'muted', text: empty });
  return h('table', {}, h('thead', {}, h('tr', {}, head.map((t) => h('th', { text: t })))), h('tbody', {}, rows.map((row) => h('tr', {}, row.map((c) => h('td', { text: c }))))));
}

function sparkGraph(history) {
  const width = 640;
  const height = 140;
  const max = Math.max(0, ...history.flatMap((r) => LINES.map(({ key }) => r[key] ?? 0)));
  return h(
    'div',
    {},
    s(
      'svg',
      // A margin around the box keeps the lines' ends and the dots inside the picture.
      { viewBox: `-6 -6 ${width + 12} ${height + 12}`, class: 'chart spark', role: 'img', 'aria-label': 'Calls per second' },
      s('line', { x1: 0, x2: width, y1: height, y2: height, class: 'grid' }),
      LINES.map(({ key }) => {
        const points = linePoints(history.map((r) => r[key] ?? 0), width, height, max);
        const last = points.split(' ').at(-1)?.split(',');
        return [
          s('polyline', { points, class: `line line-${key}` }),
          last?.length === 2 ? s('circle', { cx: last[0], cy: last[1], r: 3.5, class: `dot line-${key}` }) : null,
        ];
      }),
    ),
    h('ul', { class: 'legend' }, LINES.map(({ key, label }) => h('li', {}, h('span', { class: `swatch line-${key}` }), label)), h('li', { class: 'muted', text: `peak ${perSecondText(max)}` })),
  );
}
