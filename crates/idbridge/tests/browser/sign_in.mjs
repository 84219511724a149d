// Signs in through the tenant's real sign-in page with headless Chromium.
// Usage: node sign_in.mjs <My Apps URL> <user name> <password>
// Prints one JSON line: {"url": the final URL, "text": the page's text,
// "narrowWidth": the signed-in page's width in a 375 px wide window}.
// With $SCREENSHOT_DIR set, it saves the signed-in page at desktop width and 375 px.
// The Chromium binary is $CHROMIUM (default /usr/bin/chromium); its profile
// lives in $PROFILE_DIR, which the calling test creates and removes.
// puppeteer-core is resolved from $BROWSER_TOOLS (scripts/test installs it
// into .tools/browser from this directory's package.json).
import { createRequire } from 'node:module';

const require = createRequire(`${process.env.BROWSER_TOOLS || '.'}/`);
const puppeteer = require('puppeteer-core');

const [start, username, password] = process.argv.slice(2);
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  userDataDir: process.env.PROFILE_DIR,
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', '--no-first-run'],
});
try {
  const page = await browser.newPage();
  page.setDefaultTimeout(15000);
  await page.goto(start, { waitUntil: 'load' });
  // My Apps has a "Sign in" link that starts the OpenID Connect flow.
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  const text = await page.evaluate(() => document.body.innerText);
  const shots = process.env.SCREENSHOT_DIR;
  if (shots) await page.screenshot({ path: `${shots}/signed-in-desktop.png`, fullPage: true });
  // A phone: long values must wrap, not widen the page.
  await page.setViewport({ width: 375, height: 700 });
  const narrowWidth = await page.evaluate(() => document.documentElement.scrollWidth);
  if (shots) await page.screenshot({ path: `${shots}/signed-in-375.png`, fullPage: true });
  console.log(JSON.stringify({ url: page.url(), text, narrowWidth }));
} finally {
  await browser.close();
}
