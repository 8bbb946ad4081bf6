// The usage chart's arithmetic: days, scale and bar geometry.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { fillDays, isoDay, lastDays, layout, niceCeil, short, SERIES } from '../../../authz/console/chart.js';

const NOW = Date.parse('2025-03-02T23:59:00Z');

test('the last n UTC days end today and cross month ends', () => {
  assert.deepEqual(lastDays(4, NOW), ['2025-02-27', '2025-02-28', '2025-03-01', '2025-03-02']);
  assert.equal(isoDay(Date.parse('2025-03-02T00:00:00Z')), '2025-03-02');
  assert.equal(lastDays(30, NOW).length, 30);
});

test('days the answer leaves out are zero; odd values read as zero', () => {
  const days = lastDays(3, NOW);
  const filled = fillDays(days, {
    days: [
      { date: '2025-03-01', allowed: 5, denied: 2, rate_limited: 1 },
      { date: '2025-03-02T00:00:00Z', allowed: '7', denied: -3, rate_limited: null },
      { date: '2024-01-01', allowed: 99 },
    ],
  });
  assert.deepEqual(filled, [
    { date: '2025-02-28', allowed: 0, denied: 0, rate_limited: 0 },
    { date: '2025-03-01', allowed: 5, denied: 2, rate_limited: 1 },
    { date: '2025-03-02', allowed: 7, denied: 0, rate_limited: 0 },
  ]);
  assert.deepEqual(fillDays(days, null).map((d) => d.allowed), [0, 0, 0]);
});

test('the scale rounds up to 1, 2 or 5 times a power of ten', () => {
  const cases = [[0, 1], [1, 1], [3, 5], [7, 10], [10, 10], [11, 20], [250, 500], [999, 1000], [1001, 2000], [0.3, 0.5]];
  for (const [n, want] of cases) assert.equal(niceCeil(n), want, `niceCeil(${n})`);
  assert.equal(short(1500), '1.5k');
  assert.equal(short(2000000), '2M');
  assert.equal(short(12), '12');
});

test('bars stack the series in order, proportional to the scale, inside the box', () => {
  const entries = [
    { date: '2025-03-01', allowed: 50, denied: 30, rate_limited: 20 },
    { date: '2025-03-02', allowed: 0, denied: 0, rate_limited: 0 },
    { date: '2025-03-03', allowed: 25, denied: 0, rate_limited: 0 },
  ];
  const g = layout(entries, { width: 300, height: 120, left: 30, right: 0, top: 10, bottom: 10 });
  assert.equal(g.max, 100);
  const [full, empty, quarter] = g.bars;
  assert.deepEqual(full.segments.map((s) => s.key), SERIES.map((s) => s.key));
  // Heights are the values' share of the 100 px plot, stacked without gaps from the baseline.
  assert.deepEqual(full.segments.map((s) => Math.round(s.h)), [50, 30, 20]);
  assert.equal(full.segments[0].y + full.segments[0].h, 110, 'first segment sits on the baseline');
  for (let i = 1; i < full.segments.length; i++) {
    assert.equal(full.segments[i].y + full.segments[i].h, full.segments[i - 1].y);
  }
  assert.equal(full.segments.at(-1).y, 10, 'the tallest bar reaches the top of the plot');
  assert.deepEqual(empty.segments, []);
  assert.equal(Math.round(quarter.segments[0].h), 25);
  for (const b of g.bars) {
    assert.ok(b.x >= 30 && b.x + b.w <= 300, `bar ${b.date} inside the plot`);
  }
  assert.ok(full.x < empty.x && empty.x < quarter.x, 'oldest day first');
  assert.deepEqual(g.ticks.map((t) => t.value), [0, 50, 100]);
  assert.deepEqual(g.labels.map((l) => l.text), ['03-03'], 'the last day, then every seventh back');
  const month = layout(lastDays(30, NOW).map((date) => ({ date, allowed: 1, denied: 0, rate_limited: 0 })));
  assert.deepEqual(month.labels.map((l) => l.text), ['02-02', '02-09', '02-16', '02-23', '03-02']);
});

test('a chart of nothing still has a scale', () => {
  const g = layout([{ date: '2025-03-01', allowed: 0, denied: 0, rate_limited: 0 }]);
  assert.equal(g.max, 1);
  assert.ok(g.ticks.every((t) => Number.isFinite(t.y)));
});
