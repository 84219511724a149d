// Password writeback with headless Chromium: a synchronised user signs in to
// Security info, changes the password there (set in the on-premises
// directory by the agent), adds an authenticator app, then in a fresh browser
// resets the password with "Forgot your password?" and a code from Debian's
// `oathtool`; then signs in with a recovery code, adds a passkey of
// Chromium's virtual authenticator, and resets the password again with it.
// Usage: node writeback.mjs <tenant URL (http://localhost:PORT)> <user name> <password> <changed> <reset> <passkey reset>
// Prints one JSON line: {"changed": the page after the change, "reset": the page
// after the reset, "passkeyReset": the page after the passkey's reset,
// "violations": serious or critical axe-core findings, "tooWide": pages wider than 375 px}.
// With $SCREENSHOT_DIR set, every page is saved at desktop width and 375 px.
import { execFileSync } from 'node:child_process';
import { launch, newPage as openPage, pageWithAuthenticator, scan as scanPage } from './common.mjs';

const [base, username, password, changed, reset, passkeyReset] = process.argv.slice(2);
const browser = await launch();
const out = { changed: '', reset: '', passkeyReset: '', violations: [], tooWide: [] };
const scan = (page, name) => scanPage(page, 'writeback', name, out);
const submit = (page, selector = 'button[type=submit]') =>
  Promise.all([page.waitForNavigation(), page.click(selector)]);

function oathtool(secret, offset) {
  const at = Math.floor(Date.now() / 1000) + offset;
  return execFileSync('oathtool', ['--totp', '-b', '-N', `@${at}`, secret]).toString().trim();
}

// A fresh browser signed in to Security info with `secret` (and `code` when
// the sign-in asks for a second step).
async function signedIn(secret, code, page) {
  page ??= await openPage(browser);
  await page.goto(`${base}/account/sign-in`, { waitUntil: 'load' });
  await page.type('#username', username);
  await submit(page);
  await page.type('#password', secret);
  await submit(page);
  if (code) {
    await page.type('#code', code);
    await submit(page, 'form:has(#code) button[type=submit]');
  }
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  return page;
}

// "Forgot your password?" up to the proof step: from the password page's
// link (and the name page scanned as `scanAs`), or straight to it.
async function forgotPassword(page, scanAs) {
  if (scanAs) {
    await page.goto(`${base}/account/sign-in`, { waitUntil: 'load' });
    await page.type('#username', username);
    await submit(page);
    await submit(page, 'a[href="/account/forgot-password"]');
    await scan(page, scanAs);
  } else {
    await page.goto(`${base}/account/forgot-password`, { waitUntil: 'load' });
  }
  await page.type('#username', username);
  await submit(page);
}

// The new password's page: `secret` twice; the text of the page after it.
async function choose(page, secret) {
  await page.type('#new_password', secret);
  await page.type('#confirm', secret);
  await submit(page);
  return page.evaluate(() => document.body.innerText);
}

try {
  const page = await signedIn(password);
  await scan(page, 'security-info');
  await page.type('#current-password', password);
  await page.type('#new-password', changed);
  await page.type('#confirm-password', changed);
  await submit(page, '#change-password button[type=submit]');
  out.changed = await page.evaluate(() => document.body.innerText);
  await scan(page, 'changed');

  // Signed in again with the new password, an authenticator app to prove later.
  const again = await signedIn(changed);
  await submit(again, '#add-app');
  const secret = await again.$eval('#secret', (e) => e.textContent.trim());
  await again.type('#code', oathtool(secret, 0));
  await submit(again);
  const recovery = await again.$$eval('#recovery-codes li', (items) => items.map((i) => i.textContent.trim()));

  // A fresh browser: "Forgot your password?" from the password page.
  const forgot = await openPage(browser);
  await forgotPassword(forgot, 'forgot-name');
  await scan(forgot, 'forgot-code');
  await forgot.type('#code', oathtool(secret, 30));
  await submit(forgot, 'form:has(#code) button[type=submit]');
  await scan(forgot, 'forgot-new-password');
  out.reset = await choose(forgot, reset);
  await scan(forgot, 'reset');

  // A browser with a passkey: signed in with a recovery code, the passkey
  // added on Security info, then the password reset again with it.
  const { page: keyed } = await pageWithAuthenticator(browser);
  await signedIn(reset, recovery[0], keyed);
  await keyed.waitForSelector('#add-passkey:not([hidden])');
  await submit(keyed, '#add-passkey');
  await forgotPassword(keyed);
  await keyed.waitForSelector('#passkey-reset:not([hidden])');
  await scan(keyed, 'forgot-passkey');
  await submit(keyed, '#passkey-reset');
  out.passkeyReset = await choose(keyed, passkeyReset);
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
