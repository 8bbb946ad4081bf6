// The console's entry: the login form, the navigation and the hash routes (#/keys,
// #/keys/<id>, #/plans, #/activity). Every view is drawn from the admin API's answers.

import { loggedIn, login, logout } from './api.js';
import { activityView } from './activity.js';
import { fill, h, notice } from './dom.js';
import { keyView } from './key.js';
import { keysView } from './keys.js';
import { plansView } from './plans.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const logoutButton = document.getElementById('logout');
let current = null;

const ROUTES = [
  [/^#\/keys\/([0-9A-Za-z]{12})$/, (m) => keyView(main, m[1])],
  [/^#\/keys(?:\?q=(.*))?$/, (m) => keysView(main, decodeURIComponent(m[1] ?? ''))],
  [/^#\/plans$/, () => plansView(main)],
  [/^#\/activity$/, (_, signal) => activityView(main, signal)],
];

function route() {
  current?.abort();
  current = new AbortController();
  if (!loggedIn()) {
    showLogin();
    return;
  }
  nav.hidden = false;
  logoutButton.hidden = false;
  const hash = location.hash || '#/keys';
  for (const a of nav.querySelectorAll('a')) {
    a.classList.toggle('current', hash.startsWith(a.getAttribute('href')));
  }
  for (const [pattern, view] of ROUTES) {
    const m = pattern.exec(hash);
    if (m) {
      view(m, current.signal);
      return;
    }
  }
  fill(main, h('h1', { text: 'Not found' }), h('p', {}, h('a', { href: '#/keys', text: 'Go to the keys' })));
}

function showLogin() {
  nav.hidden = true;
  logoutButton.hidden = true;
  const msg = notice();
  const token = h('input', {
    type: 'password',
    name: 'credential',
    autocomplete: 'off',
    required: true,
    'aria-label': 'Admin credential',
  });
  fill(
    main,
    h(
      'form',
      {
        class: 'card login',
        onsubmit: async (ev) => {
          ev.preventDefault();
          msg.clear();
          try {
            await login(token.value);
            token.value = '';
            route();
          } catch (e) {
            msg.show(e.message);
          }
        },
      },
      h('h1', { text: 'Tollgate console' }),
      h('p', { class: 'muted', text: 'Paste the admin credential (admin.token_file or TOLLGATE_ADMIN_TOKEN). It is kept in this tab only, until you log out or close it.' }),
      msg.el,
      h('label', { class: 'field' }, h('span', { class: 'label', text: 'Admin credential' }), token),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', text: 'Log in' })),
    ),
  );
  token.focus();
}

logoutButton.addEventListener('click', () => logout());
window.addEventListener('tollgate:logout', () => route());
window.addEventListener('hashchange', () => route());
route();
