// One key's page: its metadata (with its own rate limit), the edit form (PATCH), rotation with a
// grace period, revocation, and its usage per day with totals when the API serves it.

import { call, keyPath, optional } from './api.js';
import { lastDays, fillDays, usageChart } from './chart.js';
import { badge, field, fill, h, keyState, notice, scopesOf, secretPanel, when } from './dom.js';

const USAGE_DAYS = 30;

export async function keyView(main, id) {
  const msg = notice();
  let key;
  try {
    key = await call('GET', keyPath(id));
  } catch (e) {
    fill(main, h('p', {}, h('a', { href: '#/keys', text: '← Keys' })), msg.el);
    msg.show(e.status === 404 ? `There is no key ${id}.` : e.message);
    return;
  }
  const usage = h('section', { class: 'card' }, h('h2', { text: 'Usage per day' }), h('p', { class: 'muted', text: 'Loading…' }));
  const secretArea = h('div');
  const rerender = (k) => render(main, k, msg, secretArea, usage);
  rerender(key);
  await loadUsage(usage, id);
}

function render(main, key, msg, secretArea, usage) {
  const state = keyState(key);
  const update = (k, text) => {
    render(main, k, msg, secretArea, usage);
    msg.show(text, 'ok');
  };
  fill(
    main,
    h('p', {}, h('a', { href: '#/keys', text: '← Keys' })),
    h('div', { class: 'heading' }, h('h1', {}, key.name, ' ', h('span', { class: 'mono muted', text: key.id })), badge(state)),
    msg.el,
    secretArea,
    details(key),
    key.revoked ? null : editForm(key, msg, update),
    key.revoked ? null : rotateForm(key, msg, secretArea, update),
    key.revoked ? null : revokeForm(key, msg, update),
    usage,
  );
}

function details(key) {
  const rows = [
    ['Owner', key.owner],
    ['Tenant', key.tenant ?? '—'],
    ['Plan', key.plan ?? '—'],
    ['Rate limit', key.rate_limit ? `${limitText(key.rate_limit)} (its own)` : 'the plan’s'],
    ['Scopes', key.scopes.length ? key.scopes.join(' ') : '—'],
    ['Created', when(key.created_at)],
    ['Updated', when(key.updated_at)],
    ['Expires', when(key.expires_at) || 'never'],
    ['Last used', when(key.last_used_at) || 'never'],
  ];
  if (key.previous_secret_valid_until) rows.push(['Previous secret works until', when(key.previous_secret_valid_until)]);
  if (key.revoked_at) rows.push(['Revoked', when(key.revoked_at)]);
  return h('dl', { class: 'card details' }, rows.map(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
}

const UNITS = { s: 'second', sec: 'second', second: 'second', m: 'minute', min: 'minute', minute: 'minute', h: 'hour', hour: 'hour', d: 'day', day: 'day' };

/** `{requests_per_unit, unit}` from `100/minute` (also `100/min`, `100/m`, `/s`, `/h`, `/d`); throws on anything else. */
export function parseLimit(text) {
  const m = /^\s*(\d+)\s*\/\s*([a-z]+)\s*$/i.exec(text);
  const unit = m && UNITS[m[2].toLowerCase()];
  if (!unit) throw new Error(`Rate limit: “${text.trim()}” is not like 100/minute (second, minute, hour or day).`);
  return { requests_per_unit: Number(m[1]), unit };
}

/** `100/minute` for a key's own limit. */
export function limitText(l) {
  return `${l.requests_per_unit}/${l.unit}`;
}

/** The fields of `form` that differ from `key`, as a PATCH body (`null` clears); throws on a bad rate limit. */
export function changes(key, form) {
  const out = {};
  const text = (name, { clearable }) => {
    const v = form[name].trim();
    const was = key[name] ?? '';
    if (v === was) return;
    if (v === '' && !clearable) return;
    out[name] = v === '' ? null : v;
  };
  text('name', { clearable: false });
  text('owner', { clearable: false });
  text('tenant', { clearable: true });
  text('plan', { clearable: true });
  const scopes = scopesOf(form.scopes);
  if (scopes.join(' ') !== key.scopes.join(' ')) out.scopes = scopes;
  const exp = form.expires_at.trim();
  if (exp !== (key.expires_at ?? '')) out.expires_at = exp === '' ? null : exp;
  const limit = (form.rate_limit ?? '').trim();
  if (limit !== (key.rate_limit ? limitText(key.rate_limit) : '')) {
    out.rate_limit = limit === '' ? null : parseLimit(limit);
  }
  return out;
}

function editForm(key, msg, update) {
  const input = (name, value, attrs = {}) => h('input', { name, type: 'text', autocomplete: 'off', value: value ?? '', ...attrs });
  const inputs = {
    name: input('name', key.name, { required: true }),
    owner: input('owner', key.owner, { required: true }),
    tenant: input('tenant', key.tenant),
    plan: input('plan', key.plan),
    scopes: input('scopes', key.scopes.join(' ')),
    expires_at: input('expires_at', key.expires_at, { placeholder: '2030-01-01T00:00:00Z' }),
    rate_limit: input('rate_limit', key.rate_limit ? limitText(key.rate_limit) : '', { placeholder: '100/minute' }),
  };
  return h(
    'form',
    {
      class: 'card form-grid',
      onsubmit: async (ev) => {
        ev.preventDefault();
        msg.clear();
        const values = Object.fromEntries(Object.entries(inputs).map(([k, el]) => [k, el.value]));
        try {
          const body = changes(key, values);
          if (Object.keys(body).length === 0) {
            msg.show('Nothing to change.', 'ok');
            return;
          }
          update(await call('PATCH', keyPath(key.id), body), 'Saved.');
        } catch (e) {
          msg.show(e.message);
        }
      },
    },
    h('h2', { text: 'Edit' }),
    field('Name', inputs.name),
    field('Owner', inputs.owner),
    field('Tenant', inputs.tenant, 'empty clears it'),
    field('Plan', inputs.plan, 'empty clears it'),
    field('Scopes', inputs.scopes, 'space or comma separated'),
    field('Expires at', inputs.expires_at, 'RFC 3339, e.g. 2030-01-01T00:00:00Z; empty: never'),
    field('Rate limit', inputs.rate_limit, 'the key’s own, e.g. 100/minute; empty: none of its own'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', text: 'Save changes' })),
  );
}

function rotateForm(key, msg, secretArea, update) {
  const grace = h('input', { name: 'grace_period', type: 'text', value: '1h', autocomplete: 'off' });
  return h(
    'form',
    {
      class: 'card form-grid',
      onsubmit: async (ev) => {
        ev.preventDefault();
        msg.clear();
        try {
          const issued = await call('POST', `${keyPath(key.id)}/rotate`, { grace_period: grace.value.trim() || '0s' });
          update(issued.key, 'Rotated: the key has a new secret.');
          fill(secretArea, secretPanel(issued.secret, issued.warning, () => secretArea.replaceChildren()));
        } catch (e) {
          msg.show(e.message);
        }
      },
    },
    h('h2', { text: 'Rotate' }),
    h('p', { class: 'muted', text: 'Gives the key a new secret under the same id. The previous secret keeps working for the grace period, then stops.' }),
    field('Grace period', grace, 'e.g. 1h, 7d (at most 90d); 0s ends the old secret now'),
    h('div', { class: 'actions' }, h('button', { type: 'submit', text: 'Rotate secret' })),
  );
}

function revokeForm(key, msg, update) {
  const confirmRow = h(
    'div',
    { class: 'actions', hidden: true },
    h('span', { class: 'warning', text: 'Every request with this key will be refused, on every replica, within a second. This cannot be undone.' }),
    h('button', {
      type: 'button',
      class: 'danger',
      text: 'Revoke now',
      onclick: async () => {
        msg.clear();
        try {
          update(await call('POST', `${keyPath(key.id)}/revoke`), 'Revoked.');
        } catch (e) {
          msg.show(e.message);
        }
      },
    }),
    h('button', { type: 'button', text: 'Cancel', onclick: () => { confirmRow.hidden = true; ask.hidden = false; } }),
  );
  const ask = h('button', { type: 'button', class: 'danger', text: 'Revoke…', onclick: () => { confirmRow.hidden = false; ask.hidden = true; } });
  return h('section', { class: 'card' }, h('h2', { text: 'Revoke' }), ask, confirmRow);
}

/** `12 allowed · 1 denied · 0 rate limited` for the usage answer's `totals`. */
export function totalsText(t) {
  const n = (v) => Number(v ?? 0).toLocaleString('en-US');
  return `${n(t?.allowed)} allowed · ${n(t?.denied)} denied · ${n(t?.rate_limited)} rate limited`;
}

async function loadUsage(section, id) {
  const days = lastDays(USAGE_DAYS, Date.now());
  const title = h('h2', { text: 'Usage per day' });
  try {
    const answer = await optional(`${keyPath(id)}/usage?from=${days[0]}&to=${days[days.length - 1]}`);
    if (answer === null) {
      fill(section, title, h('p', { class: 'muted unavailable', text: 'Usage per day is not available on this version of tollgate-authz.' }));
      return;
    }
    fill(
      section,
      title,
      h('p', { class: 'totals' }, h('strong', { text: `Last ${USAGE_DAYS} days, UTC: ` }), totalsText(answer.totals)),
      usageChart(fillDays(days, answer)),
      h('p', {
        class: 'muted',
        text: `Rate limited counts the 429s tollgate-authz decides itself; in the service pair tollgate-ratelimit decides them, after tollgate-authz has counted the call as allowed. Days are kept ${answer.retention_days} days.`,
      }),
    );
  } catch (e) {
    const off = e.code === 'not_configured';
    fill(section, title, h('p', off ? { class: 'muted', text: e.message } : { class: 'notice notice-error', role: 'alert', text: e.message }));
  }
}
