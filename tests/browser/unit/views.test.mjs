// The views' pure parts: search, key state, the PATCH body, plans from keys, limits per plan.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { keyState, scopesOf, when } from '../../../authz/console/dom.js';
import { changes, limitText as ownLimitText, parseLimit, totalsText } from '../../../authz/console/key.js';
import { matches } from '../../../authz/console/keys.js';
import { limitText, limitsForPlan, plansOf, usageByPlan } from '../../../authz/console/plans.js';

const NOW = Date.parse('2025-03-01T12:00:00Z');
const key = (extra = {}) => ({
  id: 'AbCdEfGh1234',
  name: 'ci deploy',
  owner: 'team-a',
  tenant: 'acme',
  plan: 'gold',
  scopes: ['read', 'write'],
  expires_at: null,
  revoked: false,
  previous_secret_valid_until: null,
  ...extra,
});

test('a key is revoked, expired, rotating (grace running) or active', () => {
  assert.equal(keyState(key(), NOW), 'active');
  assert.equal(keyState(key({ revoked: true, expires_at: '2020-01-01T00:00:00Z' }), NOW), 'revoked');
  assert.equal(keyState(key({ expires_at: '2025-03-01T11:59:59Z' }), NOW), 'expired');
  assert.equal(keyState(key({ previous_secret_valid_until: '2025-03-01T13:00:00Z' }), NOW), 'rotating');
  assert.equal(keyState(key({ previous_secret_valid_until: '2025-03-01T11:00:00Z' }), NOW), 'active');
});

test('search matches every word anywhere in the key, case-insensitively', () => {
  assert.ok(matches(key(), ''));
  assert.ok(matches(key(), 'GOLD team-a'));
  assert.ok(matches(key(), 'abcdef'));
  assert.ok(matches(key(), 'write acme'));
  assert.ok(matches(key({ revoked: true }), 'revoked'));
  assert.ok(!matches(key(), 'gold silver'));
  assert.ok(!matches(key({ tenant: null, plan: null }), 'acme'));
});

test('the edit form sends only what changed; empty clears optional fields only', () => {
  const form = { name: 'ci deploy', owner: 'team-a', tenant: 'acme', plan: 'gold', scopes: 'read write', expires_at: '' };
  assert.deepEqual(changes(key(), form), {});
  assert.deepEqual(changes(key(), { ...form, plan: ' silver ', scopes: 'read, admin' }), { plan: 'silver', scopes: ['read', 'admin'] });
  assert.deepEqual(changes(key(), { ...form, tenant: '', plan: '' }), { tenant: null, plan: null });
  assert.deepEqual(changes(key(), { ...form, name: '', owner: ' ' }), {}, 'required fields are never cleared');
  assert.deepEqual(changes(key(), { ...form, expires_at: '2030-01-01T00:00:00Z' }), { expires_at: '2030-01-01T00:00:00Z' });
  assert.deepEqual(changes(key({ expires_at: '2030-01-01T00:00:00Z' }), { ...form, expires_at: '' }), { expires_at: null });
});

test('a key’s own rate limit is written 100/minute, parsed strictly, sent only when changed', () => {
  assert.deepEqual(parseLimit(' 100 / Min '), { requests_per_unit: 100, unit: 'minute' });
  assert.deepEqual(parseLimit('2/s'), { requests_per_unit: 2, unit: 'second' });
  assert.deepEqual(parseLimit('10/day'), { requests_per_unit: 10, unit: 'day' });
  for (const bad of ['100', '100/month', 'x/minute', '-1/minute', '1.5/minute', '']) {
    assert.throws(() => parseLimit(bad), /not like 100\/minute/, bad);
  }
  assert.equal(ownLimitText({ requests_per_unit: 5, unit: 'hour' }), '5/hour');
  const own = key({ rate_limit: { requests_per_unit: 2, unit: 'minute' } });
  const form = { name: 'ci deploy', owner: 'team-a', tenant: 'acme', plan: 'gold', scopes: 'read write', expires_at: '' };
  assert.deepEqual(changes(own, { ...form, rate_limit: '2/minute' }), {});
  assert.deepEqual(changes(own, { ...form, rate_limit: '' }), { rate_limit: null });
  assert.deepEqual(changes(key(), { ...form, rate_limit: '7/h' }), { rate_limit: { requests_per_unit: 7, unit: 'hour' } });
  assert.throws(() => changes(key(), { ...form, rate_limit: 'lots' }), /not like/);
});

test('usage totals read per plan, and as one line', () => {
  const byPlan = usageByPlan({ groups: [{ name: null, allowed: 1, denied: 0, rate_limited: 0 }, { name: 'gold', allowed: 1200, denied: 3, rate_limited: 0 }] });
  assert.equal(byPlan.get('gold').allowed, 1200);
  assert.equal(byPlan.get(null).allowed, 1);
  assert.equal(totalsText(byPlan.get('gold')), '1,200 allowed · 3 denied · 0 rate limited');
  assert.equal(totalsText(undefined), '0 allowed · 0 denied · 0 rate limited');
  assert.equal(usageByPlan(null).size, 0);
});

test('plans are counted from the keys, usable keys apart, no plan last', () => {
  const plans = plansOf(
    [
      key(),
      key({ id: 'x2', tenant: 'beta', revoked: true }),
      key({ id: 'x3', plan: 'silver', tenant: null }),
      key({ id: 'x4', plan: null }),
      key({ id: 'x5', plan: 'gold', previous_secret_valid_until: '2025-03-01T13:00:00Z' }),
    ],
    NOW,
  );
  assert.deepEqual(
    plans.map((p) => [p.plan, p.keys, p.usable, [...p.tenants].sort()]),
    [
      ['gold', 3, 2, ['acme', 'beta']],
      ['silver', 1, 1, []],
      [null, 1, 1, ['acme']],
    ],
  );
});

test('limits are matched to a plan by the plan entry of their descriptor', () => {
  const view = {
    domains: [
      {
        domain: 'gateway',
        limits: [
          { descriptor: 'plan_gold.subject', name: 'plan-gold', unlimited: false, limit: 1000, window: '1m', algorithm: 'sliding_window', shadow_mode: false },
          { descriptor: 'plan_golden.subject', name: 'x', unlimited: true, shadow_mode: false },
          { descriptor: 'route_limited', name: 'demo', unlimited: false, limit: 5, window: '1m', shadow_mode: true },
        ],
      },
    ],
  };
  assert.deepEqual(limitsForPlan(view, 'gold').map((l) => l.name), ['plan-gold']);
  assert.deepEqual(limitsForPlan(view, 'golden').map((l) => l.name), ['x']);
  assert.deepEqual(limitsForPlan(view, 'g.ld'), [], 'a plan name is not a pattern');
  assert.deepEqual(limitsForPlan(view, 'limited'), [], 'only the plan entry names a plan');
  assert.deepEqual(limitsForPlan(null, 'gold'), []);
  assert.equal(limitText(view.domains[0].limits[0]), '1000 per 1m, sliding_window');
  assert.equal(limitText(view.domains[0].limits[1]), 'unlimited');
  assert.equal(limitText(view.domains[0].limits[2]), '5 per 1m, shadow');
});

test('times are shown in UTC to the minute; scopes split on spaces and commas', () => {
  assert.equal(when('2025-05-01T12:03:04.123Z'), '2025-05-01 12:03 UTC');
  assert.equal(when(null), '');
  assert.deepEqual(scopesOf(' read, write  admin,,'), ['read', 'write', 'admin']);
});
