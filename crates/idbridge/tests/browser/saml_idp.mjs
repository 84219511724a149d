// A SAML 2.0 identity provider for the tests: answers an HTTP-Redirect
// AuthnRequest with an HTTP-POST Response whose XML signature is made by
// xml-crypto (exclusive c14n, RSA-SHA256).
//
//   node saml_idp.mjs <port> <config.json>
//
// config.json: {"entity_id", "key_file", "cert_file", "audience",
//               "accounts": {"<login>": {"name_id", "attributes": {...}}}}
// GET /sso?SAMLRequest=…&RelayState=…&login=<login>[&variant=…] answers with
// an auto-posting form. Variants make the faults a real IdP should never
// send: expired, audience, issuer, unsigned, tamper, sign-response,
// wrap-before, wrap-inside (signature wrapping); and mfa, a multi-factor
// AuthnContextClassRef.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import zlib from 'node:zlib';

const tools = process.env.BROWSER_TOOLS;
const { SignedXml } = await import(path.join(tools, 'node_modules/xml-crypto/lib/index.js'));

const [port, file] = process.argv.slice(2);
const config = JSON.parse(fs.readFileSync(file, 'utf8'));
const key = fs.readFileSync(config.key_file);

const iso = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/"/g, '&quot;');
let counter = 0;

function sign(xml, element) {
  const sig = new SignedXml({
    privateKey: key,
    signatureAlgorithm: 'http://www.w3.org/2001/04/xmldsig-more#rsa-sha256',
    canonicalizationAlgorithm: 'http://www.w3.org/2001/10/xml-exc-c14n#',
  });
  sig.addReference({
    xpath: `//*[local-name(.)='${element}']`,
    digestAlgorithm: 'http://www.w3.org/2001/04/xmlenc#sha256',
    transforms: ['http://www.w3.org/2000/09/xmldsig#enveloped-signature', 'http://www.w3.org/2001/10/xml-exc-c14n#'],
  });
  sig.computeSignature(xml, {
    location: { reference: `//*[local-name(.)='${element}']/*[local-name(.)='Issuer']`, action: 'after' },
  });
  return sig.getSignedXml();
}

function assertion(id, account, request, acs, variant, now) {
  const shift = variant === 'expired' ? -3600_000 : 0;
  const audience = variant === 'audience' ? 'https://someone-else.example/sp' : config.audience;
  const issuer = variant === 'issuer' ? 'https://impostor.example/idp' : config.entity_id;
  // variant=mfa: the IdP says it used several factors (as Entra ID and AD FS do).
  const context = variant === 'mfa'
    ? 'http://schemas.microsoft.com/claims/multipleauthn'
    : 'urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport';
  const attributes = Object.entries(account.attributes || {})
    .map(([n, v]) => `<saml:Attribute Name="${esc(n)}"><saml:AttributeValue xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="xs:string">${esc(v)}</saml:AttributeValue></saml:Attribute>`)
    .join('');
  return `<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="${id}" Version="2.0" IssueInstant="${iso(now + shift)}">`
    + `<saml:Issuer>${esc(issuer)}</saml:Issuer>`
    + `<saml:Subject><saml:NameID Format="urn:oasis:names:tc:SAML:2.0:nameid-format:persistent">${esc(account.name_id)}</saml:NameID>`
    + `<saml:SubjectConfirmation Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"><saml:SubjectConfirmationData NotOnOrAfter="${iso(now + shift + 300_000)}" Recipient="${esc(acs)}" InResponseTo="${esc(request)}"/></saml:SubjectConfirmation></saml:Subject>`
    + `<saml:Conditions NotBefore="${iso(now + shift - 30_000)}" NotOnOrAfter="${iso(now + shift + 300_000)}"><saml:AudienceRestriction><saml:Audience>${esc(audience)}</saml:Audience></saml:AudienceRestriction></saml:Conditions>`
    + `<saml:AuthnStatement AuthnInstant="${iso(now + shift)}"><saml:AuthnContext><saml:AuthnContextClassRef>${context}</saml:AuthnContextClassRef></saml:AuthnContext></saml:AuthnStatement>`
    + (attributes ? `<saml:AttributeStatement>${attributes}</saml:AttributeStatement>` : '')
    + `</saml:Assertion>`;
}

function response(request, acs, account, variant, evil) {
  const now = Date.now();
  counter += 1;
  const assertionXml = assertion(`_a${counter}x${now}`, account, request, acs, variant, now);
  const head = `<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="_r${counter}x${now}" Version="2.0" IssueInstant="${iso(now)}" Destination="${esc(acs)}" InResponseTo="${esc(request)}">`
    + `<saml:Issuer xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">${esc(config.entity_id)}</saml:Issuer>`
    + `<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>`;
  let xml = `${head}${assertionXml}</samlp:Response>`;
  if (variant === 'unsigned') return xml;
  if (variant === 'sign-response') return sign(xml, 'Response');
  xml = sign(xml, 'Assertion');
  if (variant === 'tamper') return xml.replace(`>${esc(account.name_id)}<`, `>${esc(evil.name_id)}<`);
  // Signature wrapping: the genuine signed assertion stays, an unsigned one for someone else is added.
  const forged = assertion(`_evil${counter}`, evil, request, acs, '', now);
  if (variant === 'wrap-before') return xml.replace('<saml:Assertion ', `${forged}<saml:Assertion `);
  if (variant === 'wrap-inside') {
    const signed = xml.slice(xml.indexOf('<saml:Assertion '), xml.indexOf('</samlp:Response>'));
    return xml.replace(signed, forged.replace('</saml:Assertion>', `<saml:Advice>${signed}</saml:Advice></saml:Assertion>`));
  }
  return xml;
}

http.createServer((req, res) => {
  const url = new URL(req.url, `http://127.0.0.1:${port}`);
  if (url.pathname !== '/sso') { res.writeHead(404); res.end(); return; }
  const request = zlib.inflateRawSync(Buffer.from(url.searchParams.get('SAMLRequest') || '', 'base64')).toString('utf8');
  const id = /\sID="([^"]+)"/.exec(request)?.[1];
  const acs = /AssertionConsumerServiceURL="([^"]+)"/.exec(request)?.[1];
  const account = config.accounts[url.searchParams.get('login')];
  if (!id || !acs || !account) { res.writeHead(400); res.end('bad request or unknown login'); return; }
  const evil = config.accounts[url.searchParams.get('evil') || ''] || { name_id: 'EVIL', attributes: {} };
  const xml = response(id, acs.replace(/&amp;/g, '&'), account, url.searchParams.get('variant') || '', evil);
  const body = Buffer.from(xml, 'utf8').toString('base64');
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(`<html><body onload="document.forms[0].submit()"><form method="post" action="${esc(acs)}">`
    + `<input type="hidden" name="SAMLResponse" value="${body}"/>`
    + `<input type="hidden" name="RelayState" value="${esc(url.searchParams.get('RelayState') || '')}"/>`
    + `</form></body></html>`);
}).listen(Number(port), '127.0.0.1', () => console.log('ready'));
