// A third-party OAuth2 server for tests/oauth2_server.rs: the npm package `oauth2-mock-server`,
// made strict about client authentication and made to report what the client sent.
//
//   EXPECTED_CLIENT_ID, EXPECTED_CLIENT_SECRET  the only client the token endpoint accepts
//   TOKEN_LIFETIME                              seconds, `expires_in` and `exp - iat` (default 3600)
//   RESOURCE_INDICATORS                         space-separated RFC 8707 resources the server knows;
//                                               when set, a request for another is refused
//
// Prints one line of JSON to stdout once listening: {"url":"http://127.0.0.1:PORT","token_url":…}
// and serves until SIGTERM/SIGINT or until stdin is closed (so it dies with the test that spawned
// it). One line per token request goes to stderr; secrets are never printed.
//
// oauth2-mock-server authenticates nobody and ignores `audience`, so the hooks do it:
// * beforeResponse: the body must be a form (the package also takes JSON), else 400
//   invalid_request; the client must authenticate with exactly one method of RFC 6749 §2.3.1:
//   `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`, or `client_id` and
//   `client_secret` in the form. Both at once, neither, or a wrong id/secret answer
//   401 {"error":"invalid_client"} (with `WWW-Authenticate: Basic` when Basic was tried).
// * beforeTokenSigning: the issued JWT records how the client authenticated (`client_auth`:
//   "basic" | "post"), `client_id`, `grant_type`, the requested `scope` and `audience`, the RFC 8707
//   `resource` indicators (an array; `aud` is the resource(s) when indicated, else `audience`), the names (never the values) of the form fields received (`form_fields`, sorted), a
//   request counter `seq` and a `jti`; `exp` is `iat + TOKEN_LIFETIME`.
// * RFC 8707 as oidc-provider (a conforming server) enforces it for client credentials: several
//   `resource` parameters answer 400 {"error":"invalid_target","error_description":"only a single
//   resource indicator value is supported for this grant type"}; with RESOURCE_INDICATORS set, an
//   unknown resource answers 400 invalid_target "resource indicator is missing, or unknown".

import { randomUUID } from 'node:crypto';
import { OAuth2Server } from 'oauth2-mock-server';

const expectedId = process.env.EXPECTED_CLIENT_ID;
const expectedSecret = process.env.EXPECTED_CLIENT_SECRET;
if (!expectedId || !expectedSecret) {
  console.error('server.mjs: EXPECTED_CLIENT_ID and EXPECTED_CLIENT_SECRET must be set');
  process.exit(2);
}
const knownResources = process.env.RESOURCE_INDICATORS?.split(' ').filter((r) => r !== '');
const lifetime = Number.parseInt(process.env.TOKEN_LIFETIME ?? '3600', 10);
if (!Number.isInteger(lifetime) || lifetime <= 0) {
  console.error(`server.mjs: TOKEN_LIFETIME must be a positive integer, not ${process.env.TOKEN_LIFETIME}`);
  process.exit(2);
}

// application/x-www-form-urlencoded decoding, as RFC 6749 §2.3.1 requires for Basic credentials.
function formDecode(text) {
  try {
    return decodeURIComponent(text.replace(/\+/g, ' '));
  } catch {
    return undefined; // malformed percent-encoding
  }
}

// How the request authenticated its client: {method, id, secret} or {error}.
function clientOf(req) {
  const body = req.body ?? {};
  const header = req.headers.authorization;
  const inForm = 'client_secret' in body;
  if (header !== undefined) {
    const match = /^Basic ([A-Za-z0-9+/]+=*)$/i.exec(header.trim());
    if (!match) return { error: 'Authorization header is not Basic credentials', basic: true };
    if (inForm) return { error: 'client_secret both in Authorization and in the form', basic: true };
    const decoded = Buffer.from(match[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) return { error: 'Basic credentials without a colon', basic: true };
    const id = formDecode(decoded.slice(0, colon));
    const secret = formDecode(decoded.slice(colon + 1));
    if (id === undefined || secret === undefined) {
      return { error: 'Basic credentials are not form-urlencoded', basic: true };
    }
    if ('client_id' in body && body.client_id !== id) {
      return { error: 'client_id in the form differs from the Basic user', basic: true };
    }
    return { method: 'basic', id, secret };
  }
  if (inForm) return { method: 'post', id: body.client_id, secret: body.client_secret };
  return { error: 'no client authentication' };
}

function check(client) {
  if (client.error) return client.error;
  if (client.id !== expectedId) return `unknown client_id ${JSON.stringify(client.id)}`;
  if (client.secret !== expectedSecret) return 'wrong client_secret';
  return null;
}

// The RFC 8707 `resource` parameters of a request, in order (the form parser turns a repeated
// field into an array).
function resourcesOf(body) {
  if (body.resource === undefined) return [];
  return Array.isArray(body.resource) ? body.resource : [body.resource];
}

const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');
let seq = 0;

server.service.on('beforeTokenSigning', (token, req) => {
  const body = req.body ?? {};
  const client = clientOf(req);
  seq += 1;
  Object.assign(token.payload, {
    client_auth: client.method ?? null,
    client_id: client.id ?? null,
    grant_type: body.grant_type ?? null,
    scope: body.scope ?? null,
    audience: body.audience ?? null,
    resource: resourcesOf(body),
    form_fields: Object.keys(body).sort(),
    seq,
    jti: randomUUID(),
    exp: token.payload.iat + lifetime,
  });
  const resources = resourcesOf(body);
  if (resources.length > 0) {
    // RFC 8707 §2.2: the token is issued for the indicated resource(s).
    token.payload.aud = resources.length === 1 ? resources[0] : resources;
  } else if (body.audience !== undefined) {
    token.payload.aud = body.audience;
  }
});

server.service.on('beforeResponse', (response, req) => {
  // The package also parses JSON bodies; RFC 6749 §4.4.2 requires a form.
  if (!req.is('application/x-www-form-urlencoded')) {
    console.error(`token request rejected: invalid_request: Content-Type ${req.headers['content-type']}`);
    response.statusCode = 400;
    response.body = { error: 'invalid_request', error_description: 'body must be application/x-www-form-urlencoded' };
    return;
  }
  const client = clientOf(req);
  const problem = check(client);
  if (problem) {
    console.error(`token request rejected: invalid_client: ${problem}`);
    if (client.basic || client.method === 'basic') {
      req.res?.set('WWW-Authenticate', 'Basic realm="oauth2-mock-server"');
    }
    response.statusCode = 401;
    response.body = { error: 'invalid_client', error_description: problem };
    return;
  }
  const resources = resourcesOf(req.body ?? {});
  const target =
    resources.length > 1
      ? 'only a single resource indicator value is supported for this grant type'
      : knownResources && resources.some((r) => !knownResources.includes(r))
        ? 'resource indicator is missing, or unknown'
        : null;
  if (target) {
    console.error(`token request rejected: invalid_target: ${target}`);
    response.statusCode = 400;
    response.body = { error: 'invalid_target', error_description: target };
    return;
  }
  if (response.statusCode === 200) response.body.expires_in = lifetime;
  console.error(
    `token issued: client_auth=${client.method} client_id=${client.id} ` +
      `grant_type=${req.body.grant_type} scope=${req.body.scope} audience=${req.body.audience}`,
  );
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  setTimeout(() => process.exit(0), 1000).unref(); // an open keep-alive connection must not hold us
  await server.stop().catch(() => {});
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('error', stop);
process.stdin.resume();

await server.start(0, '127.0.0.1');
// The package names the issuer http://localhost:PORT; only 127.0.0.1 is listened on.
const url = `http://127.0.0.1:${server.address().port}`;
server.issuer.url = url;
process.stdout.write(`${JSON.stringify({ url, token_url: `${url}/token` })}\n`);
