// A SAML service provider no one here wrote — @node-saml/node-saml — checks
// the tenant's identity provider: it makes the AuthnRequest (HTTP-Redirect),
// headless Chromium signs in on the tenant's pages, the tenant's page posts
// the Response to this script's ACS, and node-saml validates it (signatures
// against the certificate from the IdP metadata, audience, recipient, time,
// InResponseTo against the request it made).
// Usage: node saml_sp.mjs <IdP metadata URL> <SSO URL> <SP entity id> <ACS port> <user name> <password>
// Prints one JSON line: {"profile": node-saml's profile, "relayState": …, "error": …}.
// The browser page enforces the tenant's CSP (no bypass): the post must be allowed.
import http from 'node:http';
import { createRequire } from 'node:module';
import { launch } from './common.mjs';

const require = createRequire(`${process.env.BROWSER_TOOLS || '.'}/`);
const { SAML } = require('@node-saml/node-saml');

const [metadataUrl, ssoUrl, entityId, port, username, password] = process.argv.slice(2);
const metadata = await (await fetch(metadataUrl)).text();
const certs = [...metadata.matchAll(/<ds:X509Certificate>([^<]+)<\/ds:X509Certificate>/g)].map((m) => m[1]);
const acs = `http://127.0.0.1:${port}/acs`;
const saml = new SAML({
  entryPoint: ssoUrl,
  issuer: entityId,
  callbackUrl: acs,
  idpCert: certs,
  audience: entityId,
  wantAssertionsSigned: true,
  wantAuthnResponseSigned: true,
  validateInResponseTo: 'always',
  acceptedClockSkewMs: 5000,
});

const out = { profile: null, relayState: null, error: null };
const answered = new Promise((resolve) => {
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (chunk) => { body += chunk; });
    req.on('end', async () => {
      const form = Object.fromEntries(new URLSearchParams(body));
      try {
        const { profile } = await saml.validatePostResponseAsync(form);
        out.profile = profile;
        out.relayState = form.RelayState ?? null;
        res.end('<!doctype html><title>Signed in</title><p id="done">Signed in</p>');
      } catch (e) {
        out.error = String(e && e.message ? e.message : e);
        res.end('<!doctype html><title>Refused</title><p id="done">Refused</p>');
      }
      server.close();
      server.closeAllConnections();
      resolve();
    });
  });
  server.listen(Number(port), '127.0.0.1');
});

const browser = await launch();
try {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  const url = await saml.getAuthorizeUrlAsync('/deals/7', undefined, {});
  await page.goto(url, { waitUntil: 'load' });
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  let timer;
  await Promise.race([answered, new Promise((r) => { timer = setTimeout(r, 30000); })]);
  clearTimeout(timer);
  if (!out.profile && !out.error) out.error = 'no Response reached the ACS';
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
// The ACS server may still hold the browser's keep-alive connection.
process.exit(0);
