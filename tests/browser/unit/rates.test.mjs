// Decision rates from two /v1/stats answers.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { growth, linePoints, perSecondText, rates, remember, totals } from '../../../authz/console/rates.js';

const answer = (at, allow, deny, over, extra = {}) => ({
  at,
  checks: [
    { decision: 'allow', method: 'api_key', reason: 'allowed', count: allow },
    { decision: 'allow', method: 'anonymous', reason: 'public', count: 1 },
    { decision: 'deny', method: 'api_key', reason: 'revoked', count: deny },
    { decision: 'deny', method: 'none', reason: 'no_credential', count: 2 },
  ],
  rate_limit: over === null ? null : { over_limit: [{ domain: 'gateway', limit: 'plan-silver', count: over }], error: null },
  ...extra,
});

test('totals add up decisions, denials per reason and over-limit answers per limit', () => {
  const t = totals(answer('2025-03-01T00:00:00.000Z', 10, 3, 4));
  assert.equal(t.allow, 11);
  assert.equal(t.deny, 5);
  assert.deepEqual(t.denyByReason, { revoked: 3, no_credential: 2 });
  assert.equal(t.rateLimited, 4);
  assert.deepEqual(t.byLimit, { 'gateway/plan-silver': 4 });
  assert.equal(totals(answer('2025-03-01T00:00:00Z', 1, 1, null)).rateLimited, null, 'not configured: not zero');
  const broken = totals(answer('2025-03-01T00:00:00Z', 1, 1, 0, { rate_limit: { over_limit: [], error: 'unreachable' } }));
  assert.equal(broken.rateLimited, null);
  assert.equal(broken.rateLimitError, 'unreachable');
});

test('in single-call mode the 429s are the Checks denied for a rate limit, not denials', () => {
  const a = answer('2025-03-01T00:00:00.000Z', 10, 3, 4, { mode: 'single_call' });
  a.checks.push({ decision: 'deny', method: 'jwt', reason: 'rate_limited', count: 3 });
  const t = totals(a);
  assert.equal(t.singleCall, true);
  assert.equal(t.deny, 5, 'rate_limited is not among the denials');
  assert.equal(t.denyByReason.rate_limited, undefined);
  assert.equal(t.rateLimited, 3, 'one per request, from the Checks');
  assert.deepEqual(t.byLimit, { 'gateway/plan-silver': 4 });
  const b = answer('2025-03-01T00:00:01.000Z', 10, 3, 4, { mode: 'single_call' });
  b.checks.push({ decision: 'deny', method: 'jwt', reason: 'rate_limited', count: 5 });
  assert.equal(rates(t, totals(b)).rateLimited, 2);
  // The pair: what tollgate-ratelimit reports.
  assert.equal(totals(answer('2025-03-01T00:00:00Z', 1, 1, 7)).rateLimited, 7);
});

test('rates are growth over the time between the answers', () => {
  const a = totals(answer('2025-03-01T00:00:00.000Z', 10, 3, 4));
  const b = totals(answer('2025-03-01T00:00:02.000Z', 30, 7, 10));
  const r = rates(a, b);
  assert.equal(r.seconds, 2);
  assert.equal(r.allow, 10);
  assert.equal(r.deny, 2);
  assert.deepEqual(r.denyByReason, { revoked: 2, no_credential: 0 });
  assert.equal(r.rateLimited, 3);
  assert.deepEqual(r.byLimit, { 'gateway/plan-silver': 3 });
  assert.equal(rates(a, a), null, 'no time passed');
  assert.equal(rates(b, a), null, 'answers out of order');
});

test('a counter that went down was restarted: all of its value is new', () => {
  assert.equal(growth(100, 130), 30);
  assert.equal(growth(100, 7), 7);
  const a = totals(answer('2025-03-01T00:00:00Z', 500, 0, 50));
  const b = totals(answer('2025-03-01T00:00:01Z', 4, 0, 1));
  assert.equal(rates(a, b).allow, 5);
  assert.equal(rates(a, b).rateLimited, 1);
});

test('a new reason appears with its whole count; a missing 429 source gives no rate', () => {
  const a = totals({ at: '2025-03-01T00:00:00Z', checks: [], rate_limit: null });
  const b = totals(answer('2025-03-01T00:00:01Z', 0, 3, null));
  const r = rates(a, b);
  assert.equal(r.denyByReason.revoked, 3);
  assert.equal(r.rateLimited, null);
  assert.deepEqual(r.byLimit, {});
});

test('history keeps the newest entries', () => {
  let h = [];
  for (let i = 0; i < 5; i++) h = remember(h, i, 3);
  assert.deepEqual(h, [2, 3, 4]);
});

test('rates for people and line points', () => {
  assert.equal(perSecondText(null), '–');
  assert.equal(perSecondText(0), '0/s');
  assert.equal(perSecondText(0.25), '0.25/s');
  assert.equal(perSecondText(12.4), '12/s');
  assert.equal(perSecondText(1234), '1.2k/s');
  assert.equal(linePoints([0, 5, 10], 100, 50, 10), '0,50 50,25 100,0');
  assert.equal(linePoints([], 100, 50, 10), '');
  assert.equal(linePoints([0, 0], 100, 50, 0), '0,50 100,50', 'no traffic: a flat line at the bottom');
});
