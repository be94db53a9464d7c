// A real OpenID provider for the tests: the npm package `oidc-provider` (certified; nobody here
// wrote it) on Node 22, configured from a JSON file. Only the interaction pages (login with an
// account name, a consent button) and a small control endpoint for the tests are ours.
//
// usage: node provider.mjs CONFIG.json   (tests/support/oidc_provider.py writes the file and runs this)
// The package lives outside the checkout (`make install-test` puts it in ~/.cache/portcullis-oidc):
// OIDC_NODE_MODULES names that node_modules folder.
import { generateKeyPairSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const modules = process.env.OIDC_NODE_MODULES;
const { default: Provider } = await import(pathToFileURL(join(modules, 'oidc-provider', 'lib', 'index.js')));

const conf = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${conf.port}`;
const accounts = new Map(Object.entries(conf.accounts || {}));

// Accounts: the login name is the `sub` unless the account names another; unknown names sign in
// as a verified e-mail address with no groups (tests list the accounts whose claims matter).
function claimsOf(login) {
  const a = accounts.get(login) || {};
  const claims = {
    sub: a.sub || login,
    email: a.email ?? login,
    email_verified: a.email_verified ?? true,
    name: a.name ?? login.split('@')[0],
    groups: a.groups ?? [],
  };
  for (const [k, v] of Object.entries(claims)) if (v === null) delete claims[k];
  return claims;
}
const subToLogin = (sub) => {
  for (const [login, a] of accounts) if ((a.sub || login) === sub) return login;
  return sub;
};

const signing = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
const resource = conf.resource; // {scope, access_token_ttl} or null: JWT access tokens per resource

const configuration = {
  clients: conf.clients || [],
  jwks: { keys: [{ ...signing, kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' }] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups', ...(resource ? resource.scope.split(' ') : [])],
  claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'], groups: ['groups'] },
  conformIdTokenClaims: !conf.claims_in_id_token, // false: claims in the ID token, as most team IdPs do
  findAccount: async (ctx, sub) => ({ accountId: sub, claims: async () => claimsOf(subToLogin(sub)) }),
  // JWT access tokens carry the e-mail too, so an upstream can say whose token arrived.
  extraTokenClaims: async (ctx, token) => (token.accountId ? { email: claimsOf(subToLogin(token.accountId)).email } : {}),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  pkce: { required: () => !!conf.pkce_required },
  rotateRefreshToken: !!conf.rotate_refresh_tokens,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || conf.access_token_ttl || 600,
    AuthorizationCode: 60,
    IdToken: conf.id_token_ttl || 600,
    RefreshToken: conf.refresh_token_ttl || 86400,
    Interaction: 600,
    Session: 3600,
    Grant: 86400,
  },
  features: {
    devInteractions: { enabled: false },
    registration: { enabled: !!conf.registration },
    revocation: { enabled: !!conf.revocation },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: !!resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, indicator) => ({
        scope: resource.scope,
        audience: indicator,
        accessTokenTTL: resource.access_token_ttl || 600,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!doctype html><title>Error</title><link rel="icon" href="data:,"><h1>Error</h1><pre id="error">${esc(JSON.stringify(out))}</pre>`;
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (ctx, err) => console.error('oidc-provider server_error', err));

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(res, status, title, body) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`<!doctype html><html><head><title>${esc(title)}</title><link rel="icon" href="data:,"></head><body><h1>${esc(title)}</h1>${body}</body></html>`);
}

async function readBody(req) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  return Buffer.concat(chunks).toString('utf8');
}

// The login form (an account name, no password: the tests choose who signs in) and the consent.
async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return page(res, 400, 'Wrong interaction', '');
  const { prompt, params, session } = details;
  if (req.method === 'GET' && !action) {
    const client = await provider.Client.find(params.client_id);
    const appName = esc(client?.clientName || params.client_id);
    if (prompt.name === 'login') {
      return page(res, 200, 'Sign in to Test IdP', `<p>for <b id="client">${appName}</b></p>
<form method="post" action="/interaction/${esc(uid)}/login">
<label>Account <input id="login" name="login" autocomplete="username" autofocus></label>
<button id="sign-in" type="submit">Sign in</button></form>`);
    }
    return page(res, 200, 'Authorize', `<p><b id="client">${appName}</b> asks for: <span id="scopes">${esc(params.scope || '')}</span>
as <span id="account">${esc(session?.accountId || '')}</span></p>
<form method="post" action="/interaction/${esc(uid)}/confirm"><button id="confirm" type="submit">Continue</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="abort" type="submit">Cancel</button></form>`);
  }
  if (req.method !== 'POST') return page(res, 405, 'Method not allowed', '');
  const form = new URLSearchParams(await readBody(req));
  if (action === 'login') {
    const login = (form.get('login') || '').trim();
    if (!login) return page(res, 400, 'Sign in to Test IdP', '<p id="error">An account name is needed.</p>');
    return provider.interactionFinished(req, res, { login: { accountId: claimsOf(login).sub } },
      { mergeWithLastSubmission: false });
  }
  if (action === 'abort') {
    return provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'the person declined' },
      { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && prompt.name === 'consent') {
    const { details: missing } = prompt;
    const grant = details.grantId ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes || {})) {
      grant.addResourceScope(indicator, scopes.join(' '));
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: details.grantId ? {} : { grantId } },
      { mergeWithLastSubmission: true });
  }
  return page(res, 400, 'Unexpected step', '');
}

// Control for the tests (a token they were given): replace an account's claims at run time, e.g.
// to take a group away from someone who already signed in.
async function control(req, res) {
  const given = Buffer.from(req.headers['x-test-control'] || '');
  const expected = Buffer.from(conf.control_token || '');
  if (!expected.length || given.length !== expected.length || !timingSafeEqual(given, expected)) {
    res.statusCode = 403;
    return res.end();
  }
  if (req.method === 'PUT') {
    for (const [login, claims] of Object.entries(JSON.parse(await readBody(req)))) {
      if (claims === null) accounts.delete(login);
      else accounts.set(login, claims);
    }
  }
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify(Object.fromEntries(accounts)));
}

const handle = provider.callback();
createServer(async (req, res) => {
  try {
    const url = new URL(req.url, issuer);
    const m = url.pathname.match(/^\/interaction\/([\w-]+)(?:\/(login|confirm|abort))?$/);
    if (m) return await interaction(req, res, m[1], m[2]);
    if (url.pathname === '/__test/accounts') return await control(req, res);
    return handle(req, res);
  } catch (err) {
    // An expired or unknown interaction (say, a replayed form) is the person's problem, not a crash.
    if (!res.headersSent) page(res, 400, 'Sign-in failed', `<p id="error">${esc(err.name)}: ${esc(err.message)}</p>`);
    else res.end();
  }
}).listen(conf.port, '127.0.0.1', () => console.log(`oidc-provider ready at ${issuer}`));
