// Usage per day as a stacked bar chart in SVG. The arithmetic (days, scale, bar geometry) is in
// pure functions that tests run under node; `usageChart` only turns their result into elements.

import { h, s } from './dom.js';

export const SERIES = [
  { key: 'allowed', label: 'Allowed' },
  { key: 'denied', label: 'Denied' },
  { key: 'rate_limited', label: 'Rate limited (429)' },
];

const DAY_MS = 86_400_000;

/** `YYYY-MM-DD` of a time in ms, in UTC. */
export function isoDay(ms) {
  return new Date(ms).toISOString().slice(0, 10);
}

/** The `n` UTC days ending with the day of `nowMs`, oldest first. */
export function lastDays(n, nowMs) {
  const today = Date.parse(isoDay(nowMs));
  return Array.from({ length: n }, (_, i) => isoDay(today - (n - 1 - i) * DAY_MS));
}

/**
 * One entry per day of `days` from the usage API's answer (`{days: [{date, allowed, denied,
 * rate_limited}]}`); a day the answer leaves out is a day without calls.
 */
export function fillDays(days, answer) {
  const byDay = new Map();
  for (const e of answer?.days ?? []) {
    const day = String(e.date ?? e.day ?? '').slice(0, 10);
    byDay.set(day, e);
  }
  return days.map((date) => {
    const e = byDay.get(date) ?? {};
    const out = { date };
    for (const { key } of SERIES) out[key] = count(e[key]);
    return out;
  });
}

function count(v) {
  const n = Number(v);
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0;
}

/** The smallest 1, 2 or 5 times a power of ten that is at least `n` (1 for nothing). */
export function niceCeil(n) {
  if (!(n > 0)) return 1;
  const pow = 10 ** Math.floor(Math.log10(n));
  for (const m of [1, 2, 5, 10]) {
    if (m * pow >= n) return m * pow;
  }
  return 10 * pow;
}

/** Bar and axis geometry for `entries` (from `fillDays`) in a `width` × `height` box. */
export function layout(entries, { width = 960, height = 260, left = 48, right = 8, top = 8, bottom = 24 } = {}) {
  const totals = entries.map((e) => SERIES.reduce((sum, { key }) => sum + e[key], 0));
  const max = niceCeil(Math.max(0, ...totals));
  const plotH = height - top - bottom;
  const slot = entries.length ? (width - left - right) / entries.length : 0;
  const barW = Math.max(1, slot * 0.7);
  const y = (v) => top + plotH - (v / max) * plotH;
  const bars = entries.map((e, i) => {
    let base = 0;
    const segments = [];
    for (const { key } of SERIES) {
      const value = e[key];
      if (value > 0) {
        segments.push({ key, value, y: y(base + value), h: y(base) - y(base + value) });
      }
      base += value;
    }
    return { date: e.date, x: left + i * slot + (slot - barW) / 2, w: barW, total: totals[i], segments };
  });
  const ticks = [0, max / 2, max].map((value) => ({ value, y: y(value) }));
  // A date under the last bar and every seventh before it (so labels never crowd), oldest first.
  const labels = bars
    .filter((_, i) => (bars.length - 1 - i) % 7 === 0)
    .map((b) => ({ x: b.x + b.w / 2, text: b.date.slice(5) }));
  return { width, height, left, top, plotH, max, bars, ticks, labels };
}

/** Compact numbers for axis ticks: 1200 -> 1.2k. */
export function short(n) {
  if (n >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
  return String(+n.toFixed(1));
}

/** The chart, its legend and the same numbers as a table. */
export function usageChart(entries) {
  const g = layout(entries);
  const svg = s(
    'svg',
    { viewBox: `0 0 ${g.width} ${g.height}`, class: 'chart', role: 'img', 'aria-label': 'Calls per day' },
    g.ticks.map((t) => [
      s('line', { x1: g.left, x2: g.width - 8, y1: t.y, y2: t.y, class: 'grid' }),
      s('text', { x: g.left - 6, y: t.y + 4, class: 'tick', 'text-anchor': 'end', text: short(t.value) }),
    ]),
    g.bars.map((b) =>
      s(
        'g',
        { class: 'bar', 'data-date': b.date },
        s('title', { text: `${b.date}: ${SERIES.map(({ key, label }) => `${label} ${entryOf(entries, b.date)[key]}`).join(', ')}` }),
        b.segments.map((seg) => s('rect', { x: b.x, y: seg.y, width: b.w, height: seg.h, class: `seg seg-${seg.key}` })),
      ),
    ),
    g.labels.map((l) => s('text', { x: l.x, y: g.height - 6, class: 'tick', 'text-anchor': 'middle', text: l.text })),
  );
  const legend = h(
    'ul',
    { class: 'legend' },
    SERIES.map(({ key, label }) => h('li', {}, h('span', { class: `swatch seg-${key}` }), label)),
  );
  const table = h(
    'details',
    {},
    h('summary', { text: 'Numbers' }),
    h(
      'table',
      { class: 'usage' },
      h('thead', {}, h('tr', {}, h('th', { text: 'Day (UTC)' }), SERIES.map(({ label }) => h('th', { text: label })))),
      h(
        'tbody',
        {},
        entries
          .filter((e) => SERIES.some(({ key }) => e[key] > 0))
          .map((e) => h('tr', {}, h('td', { text: e.date }), SERIES.map(({ key }) => h('td', { text: e[key] })))),
      ),
    ),
  );
  return h('div', { class: 'chart-box' }, svg, legend, table);
}

function entryOf(entries, date) {
  return entries.find((e) => e.date === date);
}
