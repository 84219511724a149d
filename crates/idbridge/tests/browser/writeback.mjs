// Password writeback with headless Chromium: a synchronised user signs in to
// Security info, changes the password there (set in the on-premises
// directory by the agent), adds an authenticator app, then in a fresh browser
// resets the password with "Forgot your password?" and a code from Debian's
// `oathtool`.
// Usage: node writeback.mjs <tenant URL> <user name> <password> <changed> <reset>
// Prints one JSON line: {"changed": the page after the change, "reset": the page
// after the reset, "violations": serious or critical axe-core findings,
// "tooWide": pages wider than 375 px}.
// With $SCREENSHOT_DIR set, every page is saved at desktop width and 375 px.
import { execFileSync } from 'node:child_process';
import { launch, newPage as openPage, scan as scanPage } from './common.mjs';

const [base, username, password, changed, reset] = process.argv.slice(2);
const browser = await launch();
const out = { changed: '', reset: '', violations: [], tooWide: [] };
const scan = (page, name) => scanPage(page, 'writeback', name, out);
const submit = (page, selector = 'button[type=submit]') =>
  Promise.all([page.waitForNavigation(), page.click(selector)]);

function oathtool(secret, offset) {
  const at = Math.floor(Date.now() / 1000) + offset;
  return execFileSync('oathtool', ['--totp', '-b', '-N', `@${at}`, secret]).toString().trim();
}

// A fresh browser signed in to Security info with `secret`.
async function signedIn(secret) {
  const page = await openPage(browser);
  await page.goto(`${base}/account/sign-in`, { waitUntil: 'load' });
  await page.type('#username', username);
  await submit(page);
  await page.type('#password', secret);
  await submit(page);
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  return page;
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

  // A fresh browser: "Forgot your password?" from the password page.
  const forgot = await openPage(browser);
  await forgot.goto(`${base}/account/sign-in`, { waitUntil: 'load' });
  await forgot.type('#username', username);
  await submit(forgot);
  await submit(forgot, 'a[href="/account/forgot-password"]');
  await scan(forgot, 'forgot-name');
  await forgot.type('#username', username);
  await submit(forgot);
  await scan(forgot, 'forgot-code');
  await forgot.type('#code', oathtool(secret, 30));
  await submit(forgot);
  await scan(forgot, 'forgot-new-password');
  await forgot.type('#new_password', reset);
  await forgot.type('#confirm', reset);
  await submit(forgot);
  out.reset = await forgot.evaluate(() => document.body.innerText);
  await scan(forgot, 'reset');
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
