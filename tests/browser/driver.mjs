// Drives tollgate-authz's web console in Debian's chromium (headless, through playwright-core;
// no browser is downloaded) one step at a time, for the Rust end-to-end tests.
//
//   node driver.mjs --screenshots DIR
//
// Protocol: one JSON object per line on stdin, {"step": NAME, "args": {...}}; one JSON line per
// step on stdout, {"ok": true, "result": ..., "problems": [...]} or {"ok": false, "error": ...}.
// `problems` lists everything the page reported since the last step that a working console
// never causes: console errors and warnings, uncaught exceptions, CSP violations, failed loads.
// The only failed loads expected are the feature probes' 404s and a refused login's 401; the
// Rust side fails the test on any other problem.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.TOLLGATE_CHROMIUM ?? '/usr/bin/chromium';
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const STEP_TIMEOUT_MS = 15_000;

const screenshots = argument('--screenshots') ?? join(process.cwd(), 'screenshots');
mkdirSync(screenshots, { recursive: true });

let context;
let page;
let base;
let problems = [];
// Failed loads the current step expects: [{status, url: RegExp}].
let expected = [];
// The console's feature probes: on a version without these routes they answer 404 and the page
// says the section is not available (the test checks that it says so).
const PROBES = [
  { status: 404, url: /\/v1\/keys\/[^/]+\/usage\?/ },
  { status: 404, url: /\/v1\/limits$/ },
];

function argument(name) {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : undefined;
}

function problem(kind, text) {
  problems.push(`${kind}: ${text}`);
}

function expectedFailure(status, url) {
  return [...PROBES, ...expected].some((e) => e.status === status && e.url.test(url));
}

// Chromium's "Failed to load resource: ... status of 404" lines, in its console and its log: the
// response listener has already judged that load (expected or a problem), so they are skipped.
function failedLoad(text) {
  return /^Failed to load resource: the server responded with a status of \d+/.test(text);
}

// Reports CSP violations from inside the page; added before any of the page's own scripts run.
function cspReporter() {
  document.addEventListener('securitypolicyviolation', (e) => {
    // eslint-disable-next-line no-console
    console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline code'}`);
  });
}

async function open({ url }) {
  const profile = mkdtempSync(join(tmpdir(), 'tollgate-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ARGS,
    viewport: { width: 1280, height: 860 },
    deviceScaleFactor: 1,
    permissions: ['clipboard-read', 'clipboard-write'],
    timeout: STEP_TIMEOUT_MS,
  });
  context.on('close', () => rmSync(profile, { recursive: true, force: true }));
  page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  await page.addInitScript(cspReporter);
  page.on('console', (m) => {
    if (m.type() !== 'error' && m.type() !== 'warning') return;
    if (failedLoad(m.text())) return;
    problem(`console ${m.type()}`, m.text());
  });
  page.on('pageerror', (e) => problem('uncaught', e.message));
  page.on('requestfailed', (r) => {
    // A navigation (a reload by a step) cancels what was in flight; that is not the page failing.
    if (r.failure()?.errorText === 'net::ERR_ABORTED') return;
    problem('request failed', `${r.url()} ${r.failure()?.errorText}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !expectedFailure(r.status(), r.url())) {
      problem('failed load', `${r.status()} ${r.request().method()} ${r.url()}`);
    }
  });
  // Chromium's own log: CSP reports and network errors the page's console API never sees.
  const cdp = await context.newCDPSession(page);
  cdp.on('Log.entryAdded', ({ entry }) => {
    if (entry.level !== 'error' && entry.level !== 'warning') return;
    if (entry.source === 'network' && failedLoad(entry.text)) return;
    problem(`browser ${entry.source} ${entry.level}`, `${entry.text} ${entry.url ?? ''}`);
  });
  await cdp.send('Log.enable');
  base = url;
  await page.goto(url);
  await page.getByRole('button', { name: 'Log in' }).waitFor();
  return { title: await page.title() };
}

async function login({ token, refused = false }) {
  if (refused) expected = [{ status: 401, url: /\/v1\/keys\?limit=1$/ }];
  await page.getByLabel('Admin credential').fill(token);
  await page.getByRole('button', { name: 'Log in' }).click();
  if (refused) {
    const alert = page.getByRole('alert');
    await alert.waitFor();
    return { message: await alert.textContent() };
  }
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  return { url: page.url() };
}

async function createKey({ name, owner, plan, tenant, scopes, limit }) {
  await page.getByRole('button', { name: 'New key' }).click();
  await page.getByLabel('Name').fill(name);
  await page.getByLabel('Owner').fill(owner);
  if (tenant) await page.getByLabel('Tenant').fill(tenant);
  if (plan) await page.getByLabel('Plan').fill(plan);
  if (scopes) await page.getByLabel('Scopes').fill(scopes);
  if (limit) await page.getByLabel('Rate limit').fill(limit);
  await page.getByRole('button', { name: 'Create key' }).click();
  const field = page.getByLabel('New API key');
  await field.waitFor();
  const secret = await field.inputValue();
  const id = await page.locator('p a.mono').first().textContent();
  await page.getByRole('button', { name: 'Copy' }).click();
  await page.getByText('Copied').waitFor();
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  const shot = await screenshot('create-key-secret-once');
  await page.getByRole('button', { name: 'I have stored it' }).click();
  await page.waitForURL(`**#/keys/${id}`);
  await page.getByRole('heading', { name: new RegExp(name) }).waitFor();
  return { id, secret, copied, screenshot: shot };
}

/** Whether `text` appears anywhere the page could show it: text, inputs, storage, the URL. */
async function findAnywhere({ text }) {
  return page.evaluate((t) => {
    const values = [...document.querySelectorAll('input, textarea')].map((e) => e.value);
    const stores = [sessionStorage, localStorage].flatMap((s) => Object.keys(s).map((k) => s.getItem(k)));
    const where = [];
    if (document.documentElement.outerHTML.includes(t)) where.push('document');
    if (values.some((v) => v.includes(t))) where.push('inputs');
    if (stores.some((v) => v?.includes(t))) where.push('storage');
    if (location.href.includes(t) || document.cookie.includes(t)) where.push('url or cookie');
    return where;
  }, text);
}

async function storage() {
  return page.evaluate(() => ({
    session: Object.keys(sessionStorage),
    local: Object.keys(localStorage),
    cookie: document.cookie,
  }));
}

/**
 * Opens a key's page. With `used`, reloads it (as a person would) until it shows a last use:
 * last-used times are written in batches, so the first look may come before the write. With
 * `totals`, until the usage section's totals read so. Returns the details, the usage section's
 * text and the days its chart draws with calls.
 */
async function keyPage({ id, used = false, totals = null }) {
  const end = Date.now() + 10_000;
  const usage = page.locator('section', { has: page.getByRole('heading', { name: 'Usage per day' }) });
  for (;;) {
    await visit(`${base}#/keys/${id}`);
    await page.getByRole('heading', { name: 'Usage per day' }).waitFor();
    await usage.getByText(/not available|not counted|Last \d+ days/).first().waitFor();
    const shown = await details();
    const text = await usage.innerText();
    const waiting = (used && shown['Last used'] === 'never') || (totals !== null && !text.includes(totals));
    if (!waiting || Date.now() > end) {
      const chart = await usage.locator('g.bar title').evaluateAll((ts) =>
        ts.map((t) => t.textContent).filter((x) => !x.endsWith('Allowed 0, Denied 0, Rate limited (429) 0')),
      );
      return { details: shown, usage: text, chart };
    }
  }
}

/**
 * Shows `url` freshly drawn: a goto that changes only the hash keeps the document (the console
 * redraws its view) and to the same hash does nothing, so the view is emptied first and the
 * page reloaded when the hash is already there. What a step then waits for cannot be stale.
 */
async function visit(url) {
  if (page.url() === url) {
    await page.reload();
    return;
  }
  await page.evaluate(() => document.getElementById('main').replaceChildren());
  await page.goto(url);
}

async function details() {
  return page.evaluate(() => {
    const out = {};
    const dts = document.querySelectorAll('dl.details dt');
    for (const dt of dts) out[dt.textContent] = dt.nextElementSibling.textContent;
    out.state = document.querySelector('.heading .badge')?.textContent;
    return out;
  });
}

async function sectionText(heading) {
  return page.locator('section', { has: page.getByRole('heading', { name: heading }) }).innerText();
}

async function edit({ fields }) {
  const form = page.locator('form', { has: page.getByRole('heading', { name: 'Edit' }) });
  for (const [label, value] of Object.entries(fields)) await form.getByLabel(label).fill(value);
  await form.getByRole('button', { name: 'Save changes' }).click();
  await page.getByText('Saved.').waitFor();
  return { details: await details() };
}

async function rotate({ grace }) {
  const form = page.locator('form', { has: page.getByRole('heading', { name: 'Rotate' }) });
  await form.getByLabel('Grace period').fill(grace);
  await form.getByRole('button', { name: 'Rotate secret' }).click();
  const field = page.getByLabel('New API key');
  await field.waitFor();
  const secret = await field.inputValue();
  const shot = await screenshot('rotate-with-grace');
  await page.getByRole('button', { name: 'I have stored it' }).click();
  await field.waitFor({ state: 'detached' });
  return { secret, details: await details(), screenshot: shot };
}

async function revoke() {
  await page.getByRole('button', { name: 'Revoke…' }).click();
  await page.getByRole('button', { name: 'Revoke now' }).click();
  await page.getByText('Revoked.').waitFor();
  return { details: await details() };
}

async function search({ query }) {
  await visit(`${base}#/keys`);
  await page.getByRole('heading', { name: 'API keys' }).waitFor();
  await page.locator('table.keys tbody tr a').first().waitFor();
  await page.getByLabel('Search keys').fill(query);
  const rows = await page.locator('table.keys tbody tr').evaluateAll((trs) =>
    trs.filter((tr) => tr.querySelector('a')).map((tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent)),
  );
  return { rows };
}

async function plans() {
  await visit(`${base}#/plans`);
  await page.locator('table.plans').waitFor();
  await page.getByText(/not available on this version|Loaded /).waitFor();
  return { plans: await sectionText('Plans in use'), limits: await sectionText('Limits in force') };
}

/**
 * Opens the activity page and waits until a rate (non-zero with `nonzero`) is shown for each
 * decision kind in `want`, and the graph has `points` samples.
 */
async function activity({ want = [], nonzero = false, points = 1 }) {
  await visit(`${base}#/activity`);
  const read = () =>
    page.evaluate(() =>
      Object.fromEntries(
        [...document.querySelectorAll('.stat')].map((s) => [s.querySelector('.label').textContent, s.querySelector('strong').textContent]),
      ),
    );
  await page.locator('.stat strong').first().waitFor();
  // Rates need two answers, 2 s apart; the page polls by itself.
  await page.waitForFunction(
    ([labels, nz, n]) => {
      const stats = [...document.querySelectorAll('.stat')];
      const line = document.querySelector('.spark polyline')?.getAttribute('points') ?? '';
      if (line.split(' ').filter(Boolean).length < n) return false;
      return labels.every((l) => {
        const text = stats.find((x) => x.querySelector('.label').textContent === l)?.querySelector('strong').textContent;
        return text && text !== '…' && text !== '–' && !(nz && text === '0/s');
      });
    },
    [want, nonzero, points],
    { timeout: 30_000 },
  );
  return { rates: await read(), reasons: await sectionText('Denied, by reason'), limits: await sectionText('Over limit, by limit') };
}

/**
 * Renders the usage chart component from `answer` (a usage API answer) into the page, as the
 * key's page does when the API serves usage, and reports what it drew.
 */
async function chartComponent({ answer, now }) {
  const drawn = await page.evaluate(
    async ([a, t]) => {
      const chart = await import('./chart.js');
      const box = chart.usageChart(chart.fillDays(chart.lastDays(30, Date.parse(t)), a));
      box.id = 'chart-under-test';
      document.getElementById('main').prepend(box);
      return {
        bars: box.querySelectorAll('g.bar').length,
        segments: [...box.querySelectorAll('rect.seg')].map((r) => r.getAttribute('class').replace('seg seg-', '')),
        titles: [...box.querySelectorAll('g.bar title')].map((e) => e.textContent).filter((x) => !x.endsWith('Allowed 0, Denied 0, Rate limited (429) 0')),
        rows: box.querySelectorAll('table.usage tbody tr').length,
      };
    },
    [answer, now],
  );
  const shot = join(screenshots, 'usage-chart-component.png');
  await page.locator('#chart-under-test').screenshot({ path: shot });
  await page.evaluate(() => document.getElementById('chart-under-test').remove());
  return { ...drawn, screenshot: shot };
}

/** Proves the policy is enforced: inline script and style injected into the page must not run. */
async function cspProbe() {
  const result = await page.evaluate(async () => {
    const seen = [];
    const listener = (e) => seen.push(e.violatedDirective);
    document.addEventListener('securitypolicyviolation', listener);
    const script = document.createElement('script');
    script.textContent = 'window.__inline = true';
    document.body.append(script);
    const div = document.createElement('div');
    div.setAttribute('style', 'color: red');
    document.body.append(div);
    // Violation events are queued as tasks: poll for both, with a deadline.
    const end = Date.now() + 2000;
    while (seen.length < 2 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
    document.removeEventListener('securitypolicyviolation', listener);
    div.remove();
    script.remove();
    return { ran: window.__inline === true, violations: seen };
  });
  // The probe's own violations are the point, not problems: wait until the browser has
  // reported them (script and style, twice each: console and log), then drop them.
  const csp = (p) => p.includes('Content Security Policy') || p.includes('CSP violation');
  const end = Date.now() + 5000;
  while (problems.filter(csp).length < 4 && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  result.reported = problems.filter(csp);
  problems = problems.filter((p) => !csp(p));
  return result;
}

async function logout() {
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.getByRole('button', { name: 'Log in' }).waitFor();
  return storage();
}

async function screenshot(name) {
  const path = join(screenshots, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

const STEPS = {
  open,
  login,
  create_key: createKey,
  find_anywhere: findAnywhere,
  storage,
  key_page: keyPage,
  edit,
  rotate,
  revoke,
  search,
  plans,
  activity,
  csp_probe: cspProbe,
  chart_component: chartComponent,
  logout,
  screenshot: ({ name }) => screenshot(name),
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const { step, args } = JSON.parse(line);
  let reply;
  try {
    const fn = STEPS[step];
    if (!fn) throw new Error(`unknown step ${step}`);
    const result = await fn(args ?? {});
    // A report that arrives after the reply is sent goes out with the next step's.
    reply = { ok: true, result, problems };
  } catch (e) {
    const shot = page ? await screenshot(`failed-${step}`).catch(() => null) : null;
    reply = { ok: false, error: String(e?.stack ?? e), screenshot: shot, problems };
  }
  problems = [];
  expected = [];
  process.stdout.write(`${JSON.stringify(reply)}\n`);
}
await context?.close();
