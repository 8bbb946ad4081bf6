// Plans and limits: the plans the keys are on (counted from the keys themselves) with their calls
// over the last 30 days (GET /v1/usage?group_by=plan), and the limits in force (GET /v1/limits),
// each when this version of the API serves it.

import { allKeys, optional } from './api.js';
import { lastDays } from './chart.js';
import { fill, h, keyState, notice } from './dom.js';
import { totalsText } from './key.js';

const USAGE_DAYS = 30;

/** `optional(path)`, with a route that is there but not configured (or whose source is down) as `{off: message}`. */
async function configured(path) {
  try {
    return await optional(path);
  } catch (e) {
    if (e.code === 'not_configured' || e.code === 'limits_unavailable') return { off: e.message };
    throw e;
  }
}

/** Calls per plan name (`null`: keys without one) from a `/v1/usage?group_by=plan` answer. */
export function usageByPlan(answer) {
  const out = new Map();
  for (const g of answer?.groups ?? []) out.set(g.name ?? null, g);
  return out;
}

/** Per plan (`null`: keys without one): how many keys, how many usable, which tenants. */
export function plansOf(keys, now = Date.now()) {
  const plans = new Map();
  for (const k of keys) {
    const p = plans.get(k.plan ?? null) ?? { plan: k.plan ?? null, keys: 0, usable: 0, tenants: new Set() };
    p.keys += 1;
    const state = keyState(k, now);
    if (state === 'active' || state === 'rotating') p.usable += 1;
    if (k.tenant) p.tenants.add(k.tenant);
    plans.set(p.plan, p);
  }
  return [...plans.values()].sort((a, b) => (a.plan ?? '\uffff').localeCompare(b.plan ?? '\uffff'));
}

/**
 * Limits of the `/v1/limits` view whose descriptor names `plan`: tollgate-ratelimit writes a
 * descriptor as its entries `key_value` (or `key` for any value) joined by dots, e.g.
 * `plan_gold.subject`.
 */
export function limitsForPlan(view, plan) {
  const out = [];
  for (const d of view?.domains ?? []) {
    for (const l of d.limits ?? []) {
      if (plan && new RegExp(`(^|\\.)plan_${escape(plan)}(\\.|$)`).test(l.descriptor ?? '')) {
        out.push({ domain: d.domain, ...l });
      }
    }
  }
  return out;
}

function escape(text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** `1000 / 1m, sliding_window` for one limit summary. */
export function limitText(l) {
  if (l.unlimited) return 'unlimited';
  const parts = [`${l.limit ?? '?'} per ${l.window ?? '?'}`];
  if (l.algorithm) parts.push(l.algorithm);
  if (l.burst) parts.push(`burst ${l.burst}`);
  if (l.shadow_mode) parts.push('shadow');
  return parts.join(', ');
}

export async function plansView(main) {
  const msg = notice();
  const plansBox = h('section', { class: 'card' }, h('h2', { text: 'Plans in use' }), h('p', { class: 'muted', text: 'Loading…' }));
  const limitsBox = h('section', { class: 'card' }, h('h2', { text: 'Limits in force' }), h('p', { class: 'muted', text: 'Loading…' }));
  fill(main, h('div', { class: 'heading' }, h('h1', { text: 'Plans & limits' })), msg.el, plansBox, limitsBox);
  let view = null;
  try {
    const days = lastDays(USAGE_DAYS, Date.now());
    const [{ keys, complete }, limits, usage] = await Promise.all([
      allKeys(),
      configured('/v1/limits'),
      configured(`/v1/usage?group_by=plan&from=${days[0]}&to=${days[days.length - 1]}`),
    ]);
    view = limits;
    const calls = usage === null || usage.off ? null : usageByPlan(usage);
    renderPlans(plansBox, plansOf(keys), complete, view?.off ? null : view, calls);
    renderLimits(limitsBox, view);
  } catch (e) {
    msg.show(e.message);
  }
}

function renderPlans(box, plans, complete, view, calls) {
  const head = ['Plan', 'Keys', 'Usable', 'Tenants']
    .concat(view ? ['Limits'] : [])
    .concat(calls ? [`Calls, last ${USAGE_DAYS} days`] : []);
  fill(
    box,
    h('h2', { text: 'Plans in use' }),
    complete ? null : h('p', { class: 'muted', text: 'Counted over the first 10,000 keys.' }),
    plans.length === 0
      ? h('p', { class: 'muted', text: 'No keys yet.' })
      : h(
          'table',
          { class: 'plans' },
          h('thead', {}, h('tr', {}, head.map((t) => h('th', { text: t })))),
          h(
            'tbody',
            {},
            plans.map((p) =>
              h(
                'tr',
                {},
                h('td', {}, p.plan ? h('a', { href: `#/keys?q=${encodeURIComponent(p.plan)}`, text: p.plan }) : h('span', { class: 'muted', text: 'no plan' })),
                h('td', { text: p.keys }),
                h('td', { text: p.usable }),
                h('td', { text: [...p.tenants].sort().join(' ') || '—' }),
                view ? h('td', { text: limitsForPlan(view, p.plan).map(limitText).join('; ') || '—' }) : null,
                calls ? h('td', { text: totalsText(calls.get(p.plan)) }) : null,
              ),
            ),
          ),
        ),
  );
}

function renderLimits(box, view) {
  const title = h('h2', { text: 'Limits in force' });
  if (view === null) {
    fill(box, title, h('p', { class: 'muted unavailable', text: 'The limits in force are not available on this version of tollgate-authz.' }));
    return;
  }
  if (view.off) {
    fill(box, title, h('p', { class: 'muted unavailable', text: view.off }));
    return;
  }
  const rows = (view.domains ?? []).flatMap((d) =>
    (d.limits ?? []).map((l) => h('tr', {}, h('td', { text: d.domain }), h('td', { class: 'mono', text: l.descriptor }), h('td', { text: l.name }), h('td', { text: limitText(l) }))),
  );
  fill(
    box,
    title,
    view.loaded_at ? h('p', { class: 'muted', text: `Loaded ${view.loaded_at}.` }) : null,
    h('p', { class: 'muted', text: 'A key with a rate limit of its own (on its page) gets that limit instead of its plan’s.' }),
    h(
      'table',
      {},
      h('thead', {}, h('tr', {}, ['Domain', 'Descriptor', 'Name', 'Limit'].map((t) => h('th', { text: t })))),
      h('tbody', {}, rows),
    ),
  );
}
