// Passkeys with headless Chromium and its virtual WebAuthn authenticator
// (DevTools protocol: internal transport, resident keys, user verification).
// A user signs in with the password, adds a passkey on /account, signs out,
// signs in with the passkey alone (no name, no password), then with the
// password and the passkey as the second step. A second authenticator with a
// credential of its own is refused; once the passkey is removed it stops working.
// Then a second user meets the registration campaign and adds a passkey in
// the middle of the sign-in.
// Usage: node passkeys.mjs <tenant URL (http://localhost:PORT)> <user name> <password> <second user> <password>
// Prints one JSON line: {"registered": credentials the authenticator holds after
// adding one, "resident": whether it is discoverable, "codes": recovery codes shown,
// "passkeyOnly": the page after the nameless sign-in, "recent": the Security info
// page after it, "verifyOffered": whether the step after the password offered the
// passkey, "secondFactor": the page after it, "stranger": the page after the other
// authenticator's attempt, "removed": the page after the removed passkey's attempt,
// "violations", "tooWide"}. $SCREENSHOT_DIR: every page at desktop width and 375 px.
import { createHash, createPrivateKey, generateKeyPairSync, randomBytes, sign } from 'node:crypto';
import { launch, newPage, pageWithAuthenticator as pageWithAuthenticatorIn, scan as scanPage } from './common.mjs';

const [base, username, password, secondUser, secondPassword] = process.argv.slice(2);
const browser = await launch();
const out = { violations: [], tooWide: [] };
const scan = (page, name) => scanPage(page, 'passkeys', name, out);
const text = (page) => page.evaluate(() => document.body.innerText);

const pageWithAuthenticator = () => pageWithAuthenticatorIn(browser);

async function submit(page, selector) {
  await Promise.all([page.waitForNavigation(), page.click(selector)]);
}

async function toSignInPage(page) {
  await page.goto(`${base}/myapps`, { waitUntil: 'load' });
  await submit(page, '#sign-in');
}

async function passwordSignIn(page) {
  await toSignInPage(page);
  await page.type('#username', username);
  await submit(page, 'button[type=submit]');
  await page.type('#password', password);
  await submit(page, 'button[type=submit]');
  // The registration campaign is on (for the second user): "Not now".
  if (await page.$('#skip')) await submit(page, '#skip');
}

// The passkey button fetches options, the authenticator answers, the form is posted.
async function passkeySignIn(page) {
  await toSignInPage(page);
  await page.waitForSelector('#passkey-sign-in:not([hidden])');
  await submit(page, '#passkey-sign-in');
  return text(page);
}

// An assertion made here with the registered passkey's private key (which
// the virtual authenticator exports), with one thing wrong on purpose: a
// browser never sends a wrong origin, RP ID or challenge, so only a
// hand-made assertion can show that the tenant refuses them. Submitted
// through the sign-in page's own passkey form; returns the page after it.
async function forgedSignIn(credential, { challenge, origin, rpId, counter }) {
  const page = await newPage(browser);
  await toSignInPage(page);
  const ceremony = await page.evaluate(async () => {
    const form = document.getElementById('passkey-sign-in').form;
    const fields = new URLSearchParams(new FormData(form));
    fields.set('purpose', 'sign-in');
    return (await fetch('/oauth2/passkey', { method: 'POST', body: fields })).json();
  });
  const site = new URL(base);
  const clientData = Buffer.from(JSON.stringify({
    type: 'webauthn.get',
    challenge: challenge ?? ceremony.options.publicKey.challenge,
    origin: origin ?? site.origin,
    crossOrigin: false,
  }));
  const count = Buffer.alloc(4);
  count.writeUInt32BE(counter);
  // rpIdHash, flags (user present and verified), signature counter.
  const authData = Buffer.concat([createHash('sha256').update(rpId ?? site.hostname).digest(), Buffer.from([0x05]), count]);
  const signed = Buffer.concat([authData, createHash('sha256').update(clientData).digest()]);
  const key = createPrivateKey({ key: Buffer.from(credential.privateKey, 'base64'), format: 'der', type: 'pkcs8' });
  const id = Buffer.from(credential.credentialId, 'base64').toString('base64url');
  const answer = JSON.stringify({
    id,
    rawId: id,
    type: 'public-key',
    response: {
      authenticatorData: authData.toString('base64url'),
      clientDataJSON: clientData.toString('base64url'),
      signature: sign('sha256', signed, { key, dsaEncoding: 'der' }).toString('base64url'),
      userHandle: Buffer.from(credential.userHandle, 'base64').toString('base64url'),
    },
  });
  await Promise.all([page.waitForNavigation(), page.evaluate((token, credentialJson) => {
    const form = document.getElementById('passkey-sign-in').form;
    form.elements.passkey_token.value = token;
    form.elements.credential.value = credentialJson;
    form.submit();
  }, ceremony.token, answer)]);
  return text(page);
}

async function signOut(page) {
  await page.goto(`${base}/myapps/logout`, { waitUntil: 'load' });
  const confirm = await page.$('form[action="/oauth2/logout"] button');
  if (confirm) await submit(page, 'form[action="/oauth2/logout"] button');
}

try {
  const { page, cdp, authenticatorId } = await pageWithAuthenticator();
  await passwordSignIn(page);
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  await page.waitForSelector('#add-passkey:not([hidden])');
  await scan(page, 'overview');
  await page.$eval('#passkey-label', (e) => { e.value = ''; });
  await page.type('#passkey-label', 'Laptop');
  await submit(page, '#add-passkey');
  out.codes = await page.$$eval('#recovery-codes li', (items) => items.length);
  out.addedPage = await text(page);
  await scan(page, 'added');
  const { credentials } = await cdp.send('WebAuthn.getCredentials', { authenticatorId });
  out.registered = credentials.length;
  out.resident = credentials.every((c) => c.isResidentCredential);
  const userHandle = credentials[0]?.userHandle;

  await signOut(page);
  await toSignInPage(page);
  await page.waitForSelector('#passkey-sign-in:not([hidden])');
  await scan(page, 'sign-in');
  out.passkeyOnly = await passkeySignIn(page);
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  out.recent = await text(page);

  await signOut(page);
  await passwordSignIn(page);
  out.verifyOffered = (await page.$('#passkey-verify')) !== null;
  await page.waitForSelector('#passkey-verify:not([hidden])');
  await scan(page, 'verify');
  await submit(page, '#passkey-verify');
  out.secondFactor = await text(page);

  // Hand-made assertions: wrong challenge, origin and RP ID are refused; the
  // same made right signs in (so the refusals are the faults, not the
  // making); a counter that does not move on is a copied key.
  const [registered] = credentials;
  out.forged = {
    challenge: await forgedSignIn(registered, { challenge: randomBytes(32).toString('base64url'), counter: 1000 }),
    origin: await forgedSignIn(registered, { origin: 'http://evil.example', counter: 1000 }),
    rpId: await forgedSignIn(registered, { rpId: 'evil.example', counter: 1000 }),
    right: await forgedSignIn(registered, { counter: 1000 }),
    replayedCounter: await forgedSignIn(registered, { counter: 1000 }),
  };

  // Another authenticator, holding a credential of its own for this site and user.
  const stranger = await pageWithAuthenticator();
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  await stranger.cdp.send('WebAuthn.addCredential', {
    authenticatorId: stranger.authenticatorId,
    credential: {
      credentialId: randomBytes(32).toString('base64'),
      isResidentCredential: true,
      rpId: new URL(base).hostname,
      privateKey: privateKey.export({ format: 'der', type: 'pkcs8' }).toString('base64'),
      userHandle,
      signCount: 0,
    },
  });
  out.stranger = await passkeySignIn(stranger.page);
  await scan(stranger.page, 'refused');

  // The registration campaign (the test turned it on): the second user,
  // after the password, adds a passkey in the middle of the sign-in.
  const { page: newcomer } = await pageWithAuthenticator();
  await toSignInPage(newcomer);
  await newcomer.type('#username', secondUser);
  await submit(newcomer, 'button[type=submit]');
  await newcomer.type('#password', secondPassword);
  await submit(newcomer, 'button[type=submit]');
  out.campaign = await text(newcomer);
  await newcomer.waitForSelector('#enrol-passkey:not([hidden])');
  await scan(newcomer, 'campaign');
  await submit(newcomer, '#enrol-passkey');
  out.campaignCodes = await newcomer.$$eval('#recovery-codes li', (items) => items.length);
  await scan(newcomer, 'campaign-added');
  await submit(newcomer, '#continue');
  out.campaignDone = await text(newcomer);

  // Removed on Security info: the passkey no longer signs in.
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  await submit(page, 'button[aria-label="Remove Laptop"]');
  await signOut(page);
  out.removed = await passkeySignIn(page);
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
