// Element builders and formatting shared by the console's views. Text goes in through
// textContent and attributes through setAttribute only: nothing is ever parsed as HTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

function build(el, attrs, children) {
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (name === 'text') {
      el.textContent = String(value);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h('a', {href: '#/keys', class: 'x'}, 'text', otherNode). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Replaces everything in `el` with `children`. */
export function fill(el, ...children) {
  el.replaceChildren();
  return build(el, {}, children);
}

/** `2025-05-01T12:03:04.123Z` -> `2025-05-01 12:03 UTC`; empty for null. */
export function when(iso) {
  if (!iso) return '';
  const m = /^(\d{4}-\d\d-\d\d)T(\d\d:\d\d)/.exec(iso);
  return m ? `${m[1]} ${m[2]} UTC` : iso;
}

/** One word for a key's state at `now` (ms since the epoch). */
export function keyState(key, now = Date.now()) {
  if (key.revoked) return 'revoked';
  if (key.expires_at && Date.parse(key.expires_at) <= now) return 'expired';
  if (key.previous_secret_valid_until && Date.parse(key.previous_secret_valid_until) > now) {
    return 'rotating';
  }
  return 'active';
}

export function badge(state) {
  return h('span', { class: `badge badge-${state}`, text: state });
}

/** A message area views write errors and confirmations into. */
export function notice() {
  const el = h('p', { class: 'notice', role: 'status', hidden: true });
  return {
    el,
    show(text, kind = 'error') {
      el.className = `notice notice-${kind}`;
      el.setAttribute('role', kind === 'error' ? 'alert' : 'status');
      el.textContent = text;
      el.hidden = false;
    },
    clear() {
      el.hidden = true;
      el.textContent = '';
    },
  };
}

/**
 * The once-only secret: shown in a read-only field with a copy button until the operator says
 * it is stored; then the node is removed and the string dropped, and nothing can show it again.
 */
export function secretPanel(secret, warning, onDone) {
  let value = secret;
  const field = h('input', {
    class: 'secret',
    type: 'text',
    readonly: true,
    value,
    'aria-label': 'New API key',
    spellcheck: 'false',
    autocomplete: 'off',
  });
  const status = h('span', { class: 'copied', role: 'status' });
  const copy = h('button', {
    type: 'button',
    text: 'Copy',
    onclick: async () => {
      status.textContent = (await copyText(field, value)) ? 'Copied' : 'Select the key and copy it';
    },
  });
  const panel = h(
    'section',
    { class: 'secret-panel', 'aria-live': 'polite' },
    h('h3', { text: 'Your new API key' }),
    h('p', { class: 'warning', text: warning || 'Store this key now: it is shown only once.' }),
    h('div', { class: 'secret-row' }, field, copy, status),
    h('button', {
      type: 'button',
      class: 'primary',
      text: 'I have stored it',
      onclick: () => {
        value = null;
        field.value = '';
        panel.remove();
        onDone?.();
      },
    }),
  );
  return panel;
}

async function copyText(field, value) {
  try {
    await navigator.clipboard.writeText(value);
    return true;
  } catch {
    // No clipboard API (a non-secure origin): select it so the operator can copy it by hand.
    field.focus();
    field.select();
    return false;
  }
}

/** A label with its input. */
export function field(label, input, hint) {
  return h(
    'label',
    { class: 'field' },
    h('span', { class: 'label', text: label }),
    input,
    hint ? h('span', { class: 'hint', text: hint }) : null,
  );
}

/** Splits `read, write admin` into scopes. */
export function scopesOf(text) {
  return text
    .split(/[\s,]+/)
    .map((x) => x.trim())
    .filter(Boolean);
}
