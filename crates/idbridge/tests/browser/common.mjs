// What the browser scripts share: launching headless Chromium, and checking a
// page as a person would meet it (axe-core, and screenshots at desktop width
// and 375 px). Chromium is $CHROMIUM (default /usr/bin/chromium) with its
// profile in $PROFILE_DIR; puppeteer-core and axe-core come from $BROWSER_TOOLS.
import { createRequire } from 'node:module';

const require = createRequire(`${process.env.BROWSER_TOOLS || '.'}/`);
const puppeteer = require('puppeteer-core');
const axePath = require.resolve('axe-core/axe.min.js');

export function launch() {
  return puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    userDataDir: process.env.PROFILE_DIR,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
           '--disable-sync', '--no-first-run'],
  });
}

// A page in a browser context of its own (no cookies shared with other
// pages), desktop-sized; CSP is bypassed so scan() can add axe-core.
export async function newPage(browser) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  await page.setViewport({ width: 1280, height: 800 });
  await page.setBypassCSP(true);
  return page;
}

// Scans `page` with axe-core (the page needs setBypassCSP(true): pages that
// forbid scripts are bypassed for the scan only), records serious and critical
// findings in out.violations and pages wider than 375 px in out.tooWide, and
// saves `${prefix}-${name}-desktop.png` / `-375.png` in $SCREENSHOT_DIR if set.
export async function scan(page, prefix, name, out) {
  const shots = process.env.SCREENSHOT_DIR;
  await page.addScriptTag({ path: axePath });
  const found = await page.evaluate(async () => {
    // eslint-disable-next-line no-undef
    const r = await axe.run(document, { resultTypes: ['violations'] });
    return r.violations.map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.length, help: v.help }));
  });
  for (const v of found) {
    if (v.impact === 'serious' || v.impact === 'critical') out.violations.push({ page: name, ...v });
  }
  if (shots) await page.screenshot({ path: `${shots}/${prefix}-${name}-desktop.png`, fullPage: true });
  await page.setViewport({ width: 375, height: 700 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  if (width > 375) out.tooWide.push({ page: name, width });
  if (shots) await page.screenshot({ path: `${shots}/${prefix}-${name}-375.png`, fullPage: true });
  await page.setViewport({ width: 1280, height: 800 });
}

// A page in a browser context of its own (no cookies shared) with a virtual
// authenticator that verifies its user and keeps discoverable credentials.
export async function pageWithAuthenticator(browser) {
  const page = await newPage(browser);
  const cdp = await page.createCDPSession();
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2',
      transport: 'internal',
      hasResidentKey: true,
      hasUserVerification: true,
      isUserVerified: true,
      automaticPresenceSimulation: true,
    },
  });
  return { page, cdp, authenticatorId };
}
