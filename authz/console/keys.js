// The keys view: every key in a searchable table, and the form that creates one (its secret
// shown once).

import { call } from './api.js';
import { badge, field, fill, h, keyState, notice, scopesOf, secretPanel, when } from './dom.js';
import { parseLimit } from './key.js';

const PAGE = 1000;

/** Whether `key` matches every word of `query` (id, name, owner, tenant, plan, scopes, state). */
export function matches(key, query) {
  const hay = [key.id, key.name, key.owner, key.tenant, key.plan, ...key.scopes, keyState(key)]
    .filter(Boolean)
    .join(' ')
    .toLowerCase();
  return query
    .toLowerCase()
    .split(/\s+/)
    .filter(Boolean)
    .every((word) => hay.includes(word));
}

export async function keysView(main, query = '') {
  const msg = notice();
  const keys = [];
  let cursor = null;
  const search = h('input', {
    type: 'search',
    placeholder: 'Search id, name, owner, tenant, plan, scope, state',
    'aria-label': 'Search keys',
    value: query,
    oninput: () => render(),
  });
  const body = h('tbody');
  const count = h('p', { class: 'muted' });
  const more = h('button', { type: 'button', text: 'Load more', hidden: true, onclick: () => load() });
  const createArea = h('div');
  const newButton = h('button', {
    type: 'button',
    class: 'primary',
    text: 'New key',
    onclick: () => {
      fill(createArea, createForm(createArea, msg, reload));
      createArea.querySelector('input')?.focus();
    },
  });

  function render() {
    const shown = keys.filter((k) => matches(k, search.value));
    fill(body, shown.map(row));
    if (shown.length === 0) {
      body.append(h('tr', {}, h('td', { colspan: 8, class: 'muted', text: keys.length ? 'No key matches.' : 'No keys yet.' })));
    }
    count.textContent = `${shown.length} of ${keys.length} key${keys.length === 1 ? '' : 's'}${cursor ? ' loaded' : ''}`;
    more.hidden = !cursor;
  }

  function reload() {
    keys.length = 0;
    cursor = null;
    return load();
  }

  async function load() {
    try {
      const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const page = await call('GET', `/v1/keys?limit=${PAGE}${q}`);
      keys.push(...page.keys);
      cursor = page.next_cursor;
      render();
    } catch (e) {
      msg.show(e.message);
    }
  }

  fill(
    main,
    h('div', { class: 'heading' }, h('h1', { text: 'API keys' }), newButton),
    msg.el,
    createArea,
    h('div', { class: 'toolbar' }, search, count),
    h(
      'table',
      { class: 'keys' },
      h('thead', {}, h('tr', {}, ['Id', 'Name', 'Owner', 'Tenant', 'Plan', 'Scopes', 'State', 'Last used'].map((t) => h('th', { text: t })))),
      body,
    ),
    more,
  );
  await load();
}

function row(k) {
  return h(
    'tr',
    {},
    h('td', {}, h('a', { href: `#/keys/${k.id}`, class: 'mono', text: k.id })),
    h('td', { text: k.name }),
    h('td', { text: k.owner }),
    h('td', { text: k.tenant ?? '' }),
    h('td', { text: k.plan ?? '' }),
    h('td', { text: k.scopes.join(' ') }),
    h('td', {}, badge(keyState(k))),
    h('td', { text: when(k.last_used_at) || 'never' }),
  );
}

function createForm(area, msg, created) {
  const input = (name, attrs = {}) => h('input', { name, type: 'text', autocomplete: 'off', ...attrs });
  const name = input('name', { required: true });
  const owner = input('owner', { required: true });
  const tenant = input('tenant');
  const plan = input('plan');
  const scopes = input('scopes');
  const expires = input('expires_in', { placeholder: '90d' });
  const limit = input('rate_limit', { placeholder: '100/minute' });
  const form = h(
    'form',
    {
      class: 'card form-grid',
      onsubmit: async (ev) => {
        ev.preventDefault();
        msg.clear();
        const body = { name: name.value.trim(), owner: owner.value.trim(), scopes: scopesOf(scopes.value) };
        if (tenant.value.trim()) body.tenant = tenant.value.trim();
        if (plan.value.trim()) body.plan = plan.value.trim();
        if (expires.value.trim()) body.expires_in = expires.value.trim();
        try {
          if (limit.value.trim()) body.rate_limit = parseLimit(limit.value);
          const issued = await call('POST', '/v1/keys', body);
          fill(
            area,
            h('p', {}, 'Created ', h('a', { href: `#/keys/${issued.key.id}`, class: 'mono', text: issued.key.id }), '.'),
            secretPanel(issued.secret, issued.warning, () => {
              location.hash = `#/keys/${issued.key.id}`;
            }),
          );
          await created();
        } catch (e) {
          msg.show(e.message);
        }
      },
    },
    h('h2', { text: 'New key' }),
    field('Name', name),
    field('Owner', owner, 'becomes the caller’s subject'),
    field('Tenant', tenant, 'optional'),
    field('Plan', plan, 'optional, e.g. gold'),
    field('Scopes', scopes, 'space or comma separated'),
    field('Expires in', expires, 'optional, e.g. 90d; empty: never'),
    field('Rate limit', limit, 'optional, e.g. 100/minute (second, minute, hour or day)'),
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', text: 'Create key' }),
      h('button', { type: 'button', text: 'Cancel', onclick: () => area.replaceChildren() }),
    ),
  );
  return form;
}
