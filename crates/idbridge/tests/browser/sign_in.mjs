// Signs in through the tenant's real sign-in page with headless Chromium.
// Usage: node sign_in.mjs <My Apps URL> <user name> <password>
// Prints one JSON line: {"url": the final URL, "text": the final page's text,
// "violations": serious or critical axe-core findings, "tooWide": pages wider
// than 375 px}. Every page on the way is checked (My Apps signed out, the user
// name page, the password page — once more with a very long user name — and the
// page the sign-in ends on; signed in, also the signed-out page), and two
// pages that show what they were given (an unknown application, "Sign out?").
// With $SCREENSHOT_DIR set, every page is saved at desktop width and 375 px.
// Chromium is $CHROMIUM (default /usr/bin/chromium), its profile in $PROFILE_DIR;
// puppeteer-core and axe-core come from $BROWSER_TOOLS.
import { launch, newPage, scan as scanPage } from './common.mjs';

const [start, username, password] = process.argv.slice(2);
const browser = await launch();
const out = { url: '', text: '', violations: [], tooWide: [] };
const scan = (page, name) => scanPage(page, 'sign-in', name, out);

try {
  // A name far longer than any column: it must wrap on a phone, not widen the page.
  const long = await newPage(browser);
  await long.goto(start, { waitUntil: 'load' });
  await Promise.all([long.waitForNavigation(), long.click('#sign-in')]);
  await long.type('#username', `${'ünïcödé-'.repeat(12)}person@a-rather-long-subdomain.example.test`);
  await Promise.all([long.waitForNavigation(), long.click('button[type=submit]')]);
  await scan(long, 'long-name');

  const page = await newPage(browser);
  await page.goto(start, { waitUntil: 'load' });
  await scan(page, 'my-apps-signed-out');
  // My Apps has a "Sign in" link that starts the OpenID Connect flow.
  await Promise.all([page.waitForNavigation(), page.click('#sign-in')]);
  await scan(page, 'user-name');
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await scan(page, 'password');
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  out.url = page.url();
  out.text = await page.evaluate(() => document.body.innerText);
  const signedIn = out.text.includes('Signed in as');
  // The signed-in page shows the token's claims (the immutable id, long groups).
  await scan(page, signedIn ? 'signed-in' : 'refused');
  const signOut = signedIn ? await page.$('#sign-out') : null;
  if (signOut) {
    await Promise.all([page.waitForNavigation(), signOut.click()]);
    await scan(page, 'signed-out');
  }
  // Pages that show what they were given: an unknown application's long id,
  // and "Sign out?" reached without the application's proof.
  const origin = new URL(start).origin;
  const errors = await newPage(browser);
  await errors.goto(`${origin}/oauth2/authorize?client_id=${'no-such-application-'.repeat(8)}&response_type=code&scope=openid&redirect_uri=${encodeURIComponent(`https://app.example/${'callback/'.repeat(12)}`)}`, { waitUntil: 'load' });
  await scan(errors, 'unknown-application');
  await errors.goto(`${origin}/oauth2/logout`, { waitUntil: 'load' });
  await scan(errors, 'sign-out-question');
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
