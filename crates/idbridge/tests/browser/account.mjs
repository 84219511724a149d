// Security info with headless Chromium: a user signs in through My Apps,
// opens /account, adds an authenticator app (the key read from the page, the
// code computed by Debian's `oathtool`, not by idbridge), keeps the recovery
// codes, then signs in again in a fresh browser and is asked for a code.
// Usage: node account.mjs <tenant URL> <user name> <password>
// Prints one JSON line: {"codes": recovery codes shown, "asked": whether the second
// sign-in asked for a code, "signedIn": its final text, "violations": serious or
// critical axe-core findings, "tooWide": pages wider than 375 px}.
// With $SCREENSHOT_DIR set, every page is saved at desktop width and 375 px.
// Chromium is $CHROMIUM (default /usr/bin/chromium), its profile in $PROFILE_DIR;
// puppeteer-core and axe-core come from $BROWSER_TOOLS.
import { execFileSync } from 'node:child_process';
import { launch, newPage as openPage, scan as scanPage } from './common.mjs';

const [base, username, password] = process.argv.slice(2);
const browser = await launch();
const out = { codes: 0, asked: false, signedIn: '', violations: [], tooWide: [] };

const newPage = () => openPage(browser);

// The code `oathtool` gives for the key `offset` seconds from now.
function oathtool(secret, offset) {
  const at = Math.floor(Date.now() / 1000) + offset;
  return execFileSync('oathtool', ['--totp', '-b', '-N', `@${at}`, secret]).toString().trim();
}

const scan = (page, name) => scanPage(page, 'account', name, out);

async function signIn(page) {
  await page.goto(`${base}/myapps`, { waitUntil: 'load' });
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
}

try {
  const page = await newPage();
  await signIn(page);
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  await scan(page, 'overview');
  await Promise.all([page.waitForNavigation(), page.click('#add-app')]);
  await scan(page, 'add-app');
  const secret = await page.$eval('#secret', (e) => e.textContent.trim());
  await page.type('#code', oathtool(secret, 0));
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  out.codes = await page.$$eval('#recovery-codes li', (items) => items.length);
  await scan(page, 'added');
  await page.goto(`${base}/account`, { waitUntil: 'load' });
  await scan(page, 'with-app');

  // A fresh browser: the password, then a code (the next step's, so it is not the one used above).
  const again = await newPage();
  await signIn(again);
  out.asked = (await again.$('#code')) !== null;
  await scan(again, 'code-step');
  await again.type('#code', oathtool(secret, 30));
  await Promise.all([again.waitForNavigation(), again.click('button[type=submit]')]);
  out.signedIn = await again.evaluate(() => document.body.innerText);
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
