// The admin API client. The credential lives in this tab's sessionStorage only (gone when the
// tab closes; never persistent storage, never a cookie) and goes out in the Authorization header that
// this script sets, so no request another site makes the browser send can carry it.

const STORE = 'tollgate.admin.credential';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function credential() {
  return sessionStorage.getItem(STORE);
}

export function loggedIn() {
  return credential() !== null;
}

export function logout() {
  sessionStorage.removeItem(STORE);
  window.dispatchEvent(new Event('tollgate:logout'));
}

/** Checks `token` against the API and keeps it for this tab when it works. */
export async function login(token) {
  let resp;
  try {
    resp = await send('GET', '/v1/keys?limit=1', undefined, token.trim());
  } catch {
    throw new ApiError(0, 'unreachable', 'The admin API cannot be reached.');
  }
  if (resp.status === 401) throw new ApiError(401, 'unauthorized', 'That is not the admin credential.');
  await answer(resp);
  sessionStorage.setItem(STORE, token.trim());
}

function send(method, path, body, token) {
  const headers = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  return fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
    credentials: 'omit',
    redirect: 'error',
  });
}

async function answer(resp) {
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, data?.error ?? 'error', data?.message ?? `HTTP ${resp.status}`);
  }
  return data;
}

/** Calls the admin API; a 401 ends the session (the credential was replaced or is wrong). */
export async function call(method, path, body) {
  const token = credential();
  if (token === null) {
    logout();
    throw new ApiError(401, 'unauthorized', 'Log in first.');
  }
  let resp;
  try {
    resp = await send(method, path, body, token);
  } catch {
    throw new ApiError(0, 'unreachable', 'The admin API cannot be reached.');
  }
  if (resp.status === 401) {
    logout();
    throw new ApiError(401, 'unauthorized', 'The admin credential is no longer accepted.');
  }
  return answer(resp);
}

/** Like `call`, but a 404 (a route this version does not serve) gives `null`. */
export async function optional(path) {
  try {
    return await call('GET', path);
  } catch (e) {
    if (e instanceof ApiError && e.status === 404) return null;
    throw e;
  }
}

/** Every key, a page of 1000 at a time, up to `max`. */
export async function allKeys(max = 10000) {
  const keys = [];
  let cursor = null;
  do {
    const q = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const page = await call('GET', `/v1/keys?limit=1000${q}`);
    keys.push(...page.keys);
    cursor = page.next_cursor;
  } while (cursor && keys.length < max);
  return { keys, complete: !cursor };
}

export const keyPath = (id) => `/v1/keys/${encodeURIComponent(id)}`;
