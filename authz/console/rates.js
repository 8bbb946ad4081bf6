// Decision rates from two answers of GET /v1/stats (counters since the process started): pure
// functions, run by tests under node.

/** Totals of one answer: allowed, denied (and per reason), over limit (and per limit). */
export function totals(stats) {
  const out = {
    at: Date.parse(stats.at),
    allow: 0,
    deny: 0,
    denyByReason: {},
    rateLimited: null,
    byLimit: {},
    rateLimitError: null,
    singleCall: stats.mode === 'single_call',
  };
  // In single-call mode tollgate-authz answers the 429s itself: Checks denied with reason
  // `rate_limited`, counted as over limit (once per request), not among the denials.
  let own429 = 0;
  for (const c of stats.checks ?? []) {
    if (c.decision === 'allow') {
      out.allow += c.count;
    } else if (c.decision === 'deny' && c.reason === 'rate_limited') {
      own429 += c.count;
    } else if (c.decision === 'deny') {
      out.deny += c.count;
      out.denyByReason[c.reason] = (out.denyByReason[c.reason] ?? 0) + c.count;
    }
  }
  if (stats.rate_limit) {
    out.rateLimitError = stats.rate_limit.error ?? null;
    if (!out.rateLimitError) {
      out.rateLimited = 0;
      for (const l of stats.rate_limit.over_limit ?? []) {
        const name = `${l.domain}/${l.limit}`;
        out.rateLimited += l.count;
        out.byLimit[name] = (out.byLimit[name] ?? 0) + l.count;
      }
    }
  }
  if (out.singleCall) out.rateLimited = own429;
  return out;
}

/** How much a counter grew; one that went down was restarted, so all of its value is new. */
export function growth(before, after) {
  return after >= before ? after - before : after;
}

function perSecond(before, after, seconds) {
  return growth(before ?? 0, after ?? 0) / seconds;
}

function keyed(before, after, seconds) {
  const out = {};
  for (const k of Object.keys(after)) out[k] = perSecond(before[k], after[k], seconds);
  return out;
}

/** Per-second rates between two `totals`, or null when no time passed between them. */
export function rates(prev, cur) {
  const seconds = (cur.at - prev.at) / 1000;
  if (!(seconds > 0)) return null;
  const both429 = prev.rateLimited !== null && cur.rateLimited !== null;
  return {
    seconds,
    allow: perSecond(prev.allow, cur.allow, seconds),
    deny: perSecond(prev.deny, cur.deny, seconds),
    denyByReason: keyed(prev.denyByReason, cur.denyByReason, seconds),
    rateLimited: both429 ? perSecond(prev.rateLimited, cur.rateLimited, seconds) : null,
    byLimit: both429 ? keyed(prev.byLimit, cur.byLimit, seconds) : {},
  };
}

/** `history` with `item` appended, keeping the newest `max`. */
export function remember(history, item, max = 60) {
  const out = [...history, item];
  return out.length > max ? out.slice(out.length - max) : out;
}

/** A rate for people: `0`, `0.25/s`, `12/s`, `1.2k/s`. */
export function perSecondText(r) {
  if (r === null || r === undefined) return '–';
  if (r === 0) return '0/s';
  if (r >= 1000) return `${+(r / 1000).toFixed(1)}k/s`;
  if (r >= 10) return `${Math.round(r)}/s`;
  return `${+r.toFixed(2)}/s`;
}

/** SVG polyline points for `values` in a `width` × `height` box scaled to `max`. */
export function linePoints(values, width, height, max) {
  if (values.length === 0) return '';
  const top = max > 0 ? max : 1;
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  return values
    .map((v, i) => `${+(i * step).toFixed(1)},${+(height - (Math.max(0, v) / top) * height).toFixed(1)}`)
    .join(' ');
}
