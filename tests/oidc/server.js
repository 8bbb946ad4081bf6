// The OAuth2/OIDC provider the end-to-end tests run against: the npm `oidc-provider` package with
// test-only clients, keys generated at start, client-credentials tokens (JWT or opaque), RFC 7662
// introspection and RFC 7009 revocation.
//
// Usage: node server.js --port P [--issuer-path /some/path]
// Prints exactly one line, `READY http://127.0.0.1:P`, to stdout once listening; everything else
// goes to stderr. The issuer is `http://127.0.0.1:P` followed by the issuer path, if any.
//
// Tokens (grant_type=client_credentials, TTL 10 minutes):
// - resource=https://api.tollgate.test    -> JWT (RS256, the first RSA key, `typ: at+jwt`)
// - resource=https://es256.tollgate.test  -> JWT (ES256, the EC P-256 key)
// - resource=https://opaque.tollgate.test -> opaque, introspectable
// - no resource                           -> opaque, audience https://opaque.tollgate.test
//
// The secrets below are test fixtures, not credentials of anything real.

import { createHash, generateKeyPairSync, randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider, { errors } from 'oidc-provider';

const API_RESOURCE = 'https://api.tollgate.test';
const ES256_RESOURCE = 'https://es256.tollgate.test';
const OPAQUE_RESOURCE = 'https://opaque.tollgate.test';
const INTROSPECTOR = 'tollgate-introspector';

const TOKEN_TTL_SECONDS = 600;
const SCOPES = 'read write admin';

const CLIENTS = [
  { client_id: INTROSPECTOR, client_secret: 'tollgate-introspector-secret-3f9c1a' },
  { client_id: 'app-gold', client_secret: 'app-gold-secret-7d2e4b' },
  { client_id: 'app-silver', client_secret: 'app-silver-secret-5a8f0c' },
  { client_id: 'tollgate-test', client_secret: 'tollgate-test-secret-1b6d9e' },
].map((c) => ({
  ...c,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  // client_secret_post is accepted too: the provider treats the two secret methods alike.
  token_endpoint_auth_method: 'client_secret_basic',
  scope: SCOPES,
}));

function usage(message) {
  process.stderr.write(`${message}\nusage: node server.js --port P [--issuer-path /path]\n`);
  process.exit(2);
}

function parseOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        'issuer-path': { type: 'string', default: '' },
      },
      strict: true,
    }));
  } catch (err) {
    usage(err.message);
  }
  const port = Number(values.port);
  if (!values.port || !Number.isInteger(port) || port < 0 || port > 65535) {
    usage('--port must be an integer between 0 and 65535');
  }
  let issuerPath = values['issuer-path'].replace(/\/+$/, '');
  if (issuerPath && !issuerPath.startsWith('/')) issuerPath = `/${issuerPath}`;
  return { port, issuerPath };
}

// RFC 7638 thumbprint, used as `kid` so ids are unique per run and tied to the key material.
function thumbprint(jwk) {
  const members = jwk.kty === 'RSA'
    ? { e: jwk.e, kty: jwk.kty, n: jwk.n }
    : { crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y };
  return createHash('sha256').update(JSON.stringify(members)).digest('base64url');
}

// Two RSA keys and one EC P-256 key, in memory only. The first RSA key signs RS256 tokens (the
// keystore picks the first key matching the algorithm); the second is published so verifiers
// see a JWKS with more than one candidate.
function generateJwks() {
  const rsa = () => generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = () => generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return {
    keys: [
      { key: rsa(), alg: 'RS256' },
      { key: rsa(), alg: 'RS256' },
      { key: ec(), alg: 'ES256' },
    ].map(({ key, alg }) => {
      const jwk = key.export({ format: 'jwk' });
      return { ...jwk, kid: thumbprint(jwk), alg, use: 'sig' };
    }),
  };
}

// The package's own memory adapter logs a warning and keeps only 1000 entries (an LRU), which a
// load test would exceed; this one keeps every artifact until it expires.
const storage = new Map();

class MemoryAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  static get(key) {
    const entry = storage.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      storage.delete(key);
      return undefined;
    }
    return entry.value;
  }

  static set(key, value, expiresIn) {
    const expiresAt = expiresIn ? Date.now() + expiresIn * 1000 : undefined;
    storage.set(key, { value, expiresAt });
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (this.model === 'Session' && payload.uid) {
      MemoryAdapter.set(`sessionUid:${payload.uid}`, id, expiresIn);
    }
    if (payload.userCode) {
      MemoryAdapter.set(`userCode:${payload.userCode}`, id, expiresIn);
    }
    if (payload.grantId) {
      const grantKey = `grant:${payload.grantId}`;
      const keys = MemoryAdapter.get(grantKey) ?? [];
      keys.push(key);
      MemoryAdapter.set(grantKey, keys, expiresIn);
    }
    MemoryAdapter.set(key, payload, expiresIn);
  }

  async find(id) {
    return MemoryAdapter.get(this.key(id));
  }

  async findByUid(uid) {
    const id = MemoryAdapter.get(`sessionUid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = MemoryAdapter.get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const payload = MemoryAdapter.get(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    storage.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const grantKey = `grant:${grantId}`;
    for (const key of MemoryAdapter.get(grantKey) ?? []) storage.delete(key);
    storage.delete(grantKey);
  }
}

// Expired entries are dropped on read; this sweep bounds memory for tokens nobody reads again.
setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of storage) {
    if (entry.expiresAt !== undefined && entry.expiresAt <= now) storage.delete(key);
  }
}, 30_000).unref();

function resourceServer(indicator) {
  const common = { scope: SCOPES, audience: indicator, accessTokenTTL: TOKEN_TTL_SECONDS };
  switch (indicator) {
    case API_RESOURCE:
      return { ...common, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
    case ES256_RESOURCE:
      return { ...common, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'ES256' } } };
    case OPAQUE_RESOURCE:
      return { ...common, accessTokenFormat: 'opaque' };
    default:
      throw new errors.InvalidTarget(`unknown resource indicator ${indicator}`);
  }
}

function configuration() {
  return {
    clients: CLIENTS,
    jwks: generateJwks(),
    adapter: MemoryAdapter,
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    scopes: ['openid', 'offline_access', ...SCOPES.split(' ')],
    claims: { openid: ['sub'] },
    ttl: {
      AccessToken: TOKEN_TTL_SECONDS,
      ClientCredentials: TOKEN_TTL_SECONDS,
      IdToken: TOKEN_TTL_SECONDS,
      Interaction: TOKEN_TTL_SECONDS,
      Session: TOKEN_TTL_SECONDS,
      Grant: TOKEN_TTL_SECONDS,
      RefreshToken: TOKEN_TTL_SECONDS,
      AuthorizationCode: 60,
    },
    features: {
      // No login UI: only machine clients use this provider.
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // Only the resource-server client may learn about tokens; others get `active: false`.
        allowedPolicy: async (ctx, client) => client.clientId === INTROSPECTOR,
      },
      revocation: {
        enabled: true,
        allowedPolicy: async (ctx, client, token) =>
          client.clientId === token.clientId || client.clientId === INTROSPECTOR,
      },
      resourceIndicators: {
        enabled: true,
        // Without a `resource` parameter a token is opaque, for the opaque resource server.
        defaultResource: async (ctx, client, oneOf) => oneOf ?? OPAQUE_RESOURCE,
        getResourceServerInfo: async (ctx, indicator) => resourceServer(indicator),
        useGrantedResource: async () => true,
      },
    },
    // RFC 9068 uses the client id as `sub` of client-credentials tokens; JWTs get it from the
    // package, this puts it into introspection answers too.
    extraTokenClaims: async (ctx, token) =>
      token.kind === 'ClientCredentials' ? { sub: token.clientId } : undefined,
    clientBasedCORS: () => false,
    findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => ({ sub }) }),
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };
}

function main() {
  const { port, issuerPath } = parseOptions();
  const server = createServer();

  server.on('error', (err) => {
    process.stderr.write(`oidc test provider: ${err.message}\n`);
    process.exit(1);
  });

  server.listen(port, '127.0.0.1', () => {
    const origin = `http://127.0.0.1:${server.address().port}`;
    const provider = new Provider(`${origin}${issuerPath}`, configuration());
    provider.on('server_error', (ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));
    const callback = provider.callback();

    server.on('request', (req, res) => {
      if (issuerPath) {
        const { url } = req;
        if (url !== issuerPath && !url.startsWith(`${issuerPath}/`) && !url.startsWith(`${issuerPath}?`)) {
          res.writeHead(404, { 'content-type': 'application/json' });
          res.end('{"error":"not_found"}');
          return;
        }
        // The provider derives its mount path from originalUrl minus url (as under Express).
        req.originalUrl = url;
        req.url = url.slice(issuerPath.length) || '/';
      }
      callback(req, res);
    });

    process.stdout.write(`READY ${origin}\n`);
  });

  for (const signal of ['SIGINT', 'SIGTERM']) {
    // Nothing to flush: all state is in memory and dies with the process.
    process.on(signal, () => process.exit(0));
  }
}

main();
