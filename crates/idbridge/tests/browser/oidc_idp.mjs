// A federated domain's identity provider for the tests: oidc-provider (a
// certified OpenID Provider) on loopback.
//
//   node oidc_idp.mjs <port> <accounts.json>
//
// accounts.json: {"client": {"client_id", "client_secret", "redirect_uri"},
//                 "accounts": {"<login>": {<extra ID token claims>}}}
// Sign-in uses the provider's development login form (any password); the
// consent step is skipped for the one client. Prints "ready" when listening.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const tools = process.env.BROWSER_TOOLS;
const { default: Provider } = await import(path.join(tools, 'node_modules/oidc-provider/lib/index.js'));

const [port, file] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(file, 'utf8'));
const issuer = `http://127.0.0.1:${port}`;
const extraClaims = [...new Set(Object.values(config.accounts).flatMap((a) => Object.keys(a)))];

const provider = new Provider(issuer, {
  clients: [{
    client_id: config.client.client_id,
    client_secret: config.client.client_secret,
    redirect_uris: [config.client.redirect_uri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  features: { devInteractions: { enabled: true } },
  claims: { openid: ['sub', ...extraClaims] },
  // The claims go into the ID token itself, which is all the tenant reads.
  conformIdTokenClaims: false,
  findAccount: async (ctx, id) => {
    const extra = config.accounts[id];
    if (!extra) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...extra }) };
  },
  loadExistingGrant: async (ctx) => {
    const existing = ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (existing) return ctx.oidc.provider.Grant.find(existing);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid');
    await grant.save();
    return grant;
  },
  cookies: { keys: ['idbridge-test-cookie-key'] },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));
http.createServer(provider.callback()).listen(Number(port), '127.0.0.1', () => console.log('ready'));
