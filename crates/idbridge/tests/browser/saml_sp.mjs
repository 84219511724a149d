// A SAML service provider no one here wrote — @node-saml/node-saml — checks
// the tenant's identity provider.
//
//   node saml_sp.mjs metadata <SP entity id> <port> <SP key> <SP certificate>
//     prints node-saml's own SP metadata (what `idbridge tenant app add
//     --saml-metadata` reads).
//   node saml_sp.mjs browser <IdP metadata URL> <SSO URL> <SLO URL> <SP entity id> <port> <user> <password>
//                    <tenant URL> <SP key> <app name>
//     headless Chromium, one browser session, the tenant's pages as they are
//     (CSP enforced, no bypass):
//     1. SP-initiated sign-in: node-saml makes a signed AuthnRequest
//        (HTTP-Redirect), Chromium signs in, the Response is posted to this
//        script's ACS and node-saml validates it (signatures against the
//        certificates from the IdP metadata, audience, recipient, time,
//        InResponseTo, issuer);
//     2. IdP-initiated from My Apps (`/account/apps`): the app's link posts an
//        unsolicited Response, validated the same way;
//     3. key rollover: $KEYS_PREPARE (a JSON argv) publishes the next key; an SP
//        that refreshes the metadata and one that does not both accept the next
//        Response; $KEYS_ROTATE makes the new key sign: the refreshed SP accepts,
//        the stale one refuses;
//     4. Single Logout: node-saml's signed LogoutRequest (HTTP-Redirect); the
//        tenant's signed LogoutResponse comes back to /slo and node-saml
//        validates it; My Apps then asks to sign in again.
//     Prints one JSON line with what happened.
import http from 'node:http';
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { launch, scan } from './common.mjs';

const require = createRequire(`${process.env.BROWSER_TOOLS || '.'}/`);
const { SAML } = require('@node-saml/node-saml');

const PERSISTENT = 'urn:oasis:names:tc:SAML:2.0:nameid-format:persistent';
const mode = process.argv[2];

if (mode === 'metadata') {
  const [entityId, port, keyFile, certFile] = process.argv.slice(3);
  const saml = new SAML({
    entryPoint: 'https://idp.invalid/sso',
    issuer: entityId,
    callbackUrl: `http://127.0.0.1:${port}/acs`,
    idpCert: 'unused',
    privateKey: fs.readFileSync(keyFile, 'utf8'),
    identifierFormat: PERSISTENT,
  });
  console.log(saml.generateServiceProviderMetadata(null, fs.readFileSync(certFile, 'utf8')));
  process.exit(0);
}

const [metadataUrl, ssoUrl, sloUrl, entityId, port, username, password, tenantUrl, keyFile, appName] =
  process.argv.slice(3);
const spKey = fs.readFileSync(keyFile, 'utf8');
const acs = `http://127.0.0.1:${port}/acs`;

async function idpCerts() {
  const metadata = await (await fetch(metadataUrl)).text();
  return [...metadata.matchAll(/<ds:X509Certificate>([^<]+)<\/ds:X509Certificate>/g)].map((m) => m[1]);
}

// `inResponseTo`: 'always' for SP-initiated sign-ins, 'never' for unsolicited ones.
function sp(certs, inResponseTo) {
  return new SAML({
    entryPoint: ssoUrl,
    logoutUrl: sloUrl,
    issuer: entityId,
    callbackUrl: acs,
    logoutCallbackUrl: `http://127.0.0.1:${port}/slo`,
    idpCert: certs,
    idpIssuer: metadataUrl,
    audience: entityId,
    wantAssertionsSigned: true,
    wantAuthnResponseSigned: true,
    validateInResponseTo: inResponseTo,
    acceptedClockSkewMs: 5000,
    privateKey: spKey,
    signatureAlgorithm: 'sha256',
    identifierFormat: PERSISTENT,
  });
}

async function validate(saml, form) {
  try {
    const { profile } = await saml.validatePostResponseAsync(form);
    return { profile, error: null };
  } catch (e) {
    return { profile: null, error: String(e && e.message ? e.message : e) };
  }
}

// What reaches this script's ACS (POST /acs) and logout endpoint (GET /slo), in order.
const arrivals = [];
const waiting = [];
function arrived(item) {
  const next = waiting.shift();
  if (next) next(item);
  else arrivals.push(item);
}
function nextArrival() {
  if (arrivals.length) return Promise.resolve(arrivals.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('nothing reached the SP within 60 s')), 60000);
    waiting.push((item) => { clearTimeout(timer); resolve(item); });
  });
}
const server = http.createServer((req, res) => {
  const url = new URL(req.url, acs);
  if (req.method === 'GET' && url.pathname === '/slo') {
    arrived({ kind: 'logout', raw: url.search.replace(/^\?/, ''), query: Object.fromEntries(url.searchParams) });
    res.end('<!doctype html><title>Signed out</title><p id="done">Signed out</p>');
    return;
  }
  if (req.method !== 'POST' || url.pathname !== '/acs') {
    // The browser's own requests (a favicon) are not messages.
    res.statusCode = 404;
    res.end();
    return;
  }
  let body = '';
  req.on('data', (chunk) => { body += chunk; });
  req.on('end', () => {
    arrived({ kind: 'post', form: Object.fromEntries(new URLSearchParams(body)) });
    res.end('<!doctype html><title>Received</title><p id="done">Received</p>');
  });
});
await new Promise((resolve) => server.listen(Number(port), '127.0.0.1', resolve));

// What `action` makes reach the SP, once the browser shows the SP's page
// (so the next navigation does not race the post).
async function arrivalOf(page, action) {
  const arrival = nextArrival();
  await action();
  const item = await arrival;
  await page.waitForSelector('#done');
  return item;
}

function run(variable) {
  const argv = JSON.parse(process.env[variable]);
  execFileSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'inherit'] });
}

const out = { violations: [], tooWide: [] };
const browser = await launch();
try {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(60000);

  // 1. SP-initiated, with a password.
  const certs = await idpCerts();
  out.certsBefore = certs.length;
  const first = sp(certs, 'always');
  await page.goto(await first.getAuthorizeUrlAsync('/deals/7', undefined, {}), { waitUntil: 'load' });
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.type('#password', password);
  const signIn = (await arrivalOf(page, () => page.click('button[type=submit]'))).form;
  Object.assign(out, await validate(first, signIn));
  out.relayState = signIn.RelayState ?? null;

  // 2. IdP-initiated, from My Apps (looked at by axe-core and at 375 px on a
  // page of the same browser session that may bypass the CSP for axe).
  const looker = await context.newPage();
  await looker.setBypassCSP(true);
  await looker.setViewport({ width: 1280, height: 800 });
  await looker.goto(`${tenantUrl}/account/apps`, { waitUntil: 'load' });
  await scan(looker, 'saml', 'my-apps', out);
  // A tab in the background does not run the post page's script.
  await page.bringToFront();
  await page.goto(`${tenantUrl}/account/apps`, { waitUntil: 'load' });
  out.myApps = await page.$$eval('#apps a', (links) => links.map((a) => a.textContent.trim()));
  const link = await page.$$eval('#apps a', (links, name) =>
    links.find((a) => a.textContent.trim() === name)?.getAttribute('href'), appName);
  const unsolicitedPost = await arrivalOf(page, () => page.click(`#apps a[href="${link}"]`));
  const unsolicited = await validate(sp(certs, 'never'), unsolicitedPost.form);
  out.unsolicited = unsolicited.profile;
  out.unsolicitedError = unsolicited.error;

  // 3. Key rollover: prepared (published, not signing), then rotated.
  const answerFor = async (saml) => {
    const url = await saml.getAuthorizeUrlAsync('/after', undefined, {});
    return (await arrivalOf(page, () => page.goto(url))).form;
  };
  run('KEYS_PREPARE');
  const prepared = await idpCerts();
  out.certsAfterPrepare = prepared.length;
  let refreshed = sp(prepared, 'always');
  const stale = sp(certs, 'never');
  let form = await answerFor(refreshed);
  out.prepared = { refreshed: (await validate(refreshed, form)).error, stale: (await validate(stale, form)).error };
  run('KEYS_ROTATE');
  const rotated = await idpCerts();
  out.certsAfterRotate = rotated.length;
  refreshed = sp(rotated, 'always');
  form = await answerFor(refreshed);
  const last = await validate(refreshed, form);
  out.rotated = { refreshed: last.error, stale: (await validate(stale, form)).error };

  // 4. Single Logout, SP-initiated.
  const logoutUrl = await refreshed.getLogoutUrlAsync(last.profile, '/bye', {});
  out.logoutRequestSigned = new URL(logoutUrl).searchParams.has('Signature');
  const answer = await arrivalOf(page, () => page.goto(logoutUrl));
  out.logoutResponseSigned = Boolean(answer.query.Signature);
  out.logoutRelayState = answer.query.RelayState ?? null;
  try {
    const result = await refreshed.validateRedirectAsync(answer.query, answer.raw);
    out.loggedOut = result.loggedOut;
    out.logoutError = null;
  } catch (e) {
    out.loggedOut = false;
    out.logoutError = String(e && e.message ? e.message : e);
  }
  const after = await page.goto(`${tenantUrl}/account/apps`, { waitUntil: 'load' });
  out.myAppsAfterLogout = after.status();
  await looker.bringToFront();
  await looker.goto(`${tenantUrl}/account/apps`, { waitUntil: 'load' });
  await scan(looker, 'saml', 'my-apps-signed-out', out);
} catch (e) {
  out.failure = String(e && e.stack ? e.stack : e);
} finally {
  await browser.close();
  server.closeAllConnections();
  server.close();
}
console.log(JSON.stringify(out));
process.exit(0);
