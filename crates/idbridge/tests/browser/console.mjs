// Drives the admin console with headless Chromium as each role.
// Usage: node console.mjs <tenant URL> <phase> <JSON: {admin, reader, helpdesk, locked}, each {username, password}>
// The calling test assigns roles between the phases (admin holds global-admin, helpdesk holds helpdesk).
// 1. Phase `admin`: the global administrator opens every page (axe-core scan; screenshots at desktop width and
//    375 px when $SCREENSHOT_DIR is set) and assigns `reader` the reader role with the form.
// 2. Phase `reader`: the reader signs in and submits a forged role form (with their own CSRF token): refused;
//    the user phase `admin` asked about shows where its values come from ($LINEAGE_USER, after a sync cycle).
// 3. Phase `helpdesk`: `locked` is locked out by wrong passwords at My Apps; the helpdesk unlocks them in the
//    console; `locked` then signs in.
// 4. Phase `allow`: the administrator releases the threshold stop of $CONNECTOR with the button.
// Prints one JSON line with what happened. Chromium: $CHROMIUM (default /usr/bin/chromium),
// profile in $PROFILE_DIR; puppeteer-core and axe-core from $BROWSER_TOOLS.
import { launch, scan as scanPage } from './common.mjs';

const [base, phase, accounts] = process.argv.slice(2);
const { admin, reader, helpdesk, locked } = JSON.parse(accounts);
const browser = await launch();
const out = { pages: [], violations: [], tooWide: [] };

async function newPage() {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  page.setDefaultTimeout(30000);
  await page.setViewport({ width: 1280, height: 800 });
  return page;
}

// The tenant's sign-in pages: user name, then password.
async function enterCredentials(page, { username, password }) {
  await page.type('#username', username);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  await page.type('#password', password);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
}

async function consoleSignIn(user) {
  const page = await newPage();
  await page.goto(`${base}/admin`, { waitUntil: 'load' });
  await enterCredentials(page, user);
  return page;
}

const text = (page) => page.evaluate(() => document.body.innerText);

const scan = (page, name) => scanPage(page, 'console', name, out);

try {
  // 1. The global administrator: every page, then a role assigned with the form.
  if (phase === 'admin') {
  const a = await consoleSignIn(admin);
  await a.setBypassCSP(true);
  out.adminSignedIn = (await text(a)).includes(`${admin.username} (global-admin)`);
  for (const path of ['', '/users', '/groups', '/sync', '/sign-ins', '/audit', '/domains', '/applications',
                      '/agents', '/branding', '/roles']) {
    const response = await a.goto(`${base}/admin${path}`, { waitUntil: 'load' });
    const name = path.slice(1) || 'overview';
    out.pages.push({ name, status: response.status() });
    await scan(a, name);
  }
  // A user's and a group's detail pages, reached by their links.
  await a.goto(`${base}/admin/users`, { waitUntil: 'load' });
  await Promise.all([a.waitForNavigation(), a.click('tbody a')]);
  out.pages.push({ name: 'user', status: 200 });
  await scan(a, 'user');
  // Ask the sync daemon where this user's values come from (answered by its next cycle).
  out.lineageUser = new URL(a.url()).pathname;
  await Promise.all([a.waitForNavigation(), a.click('form[action^="/admin/lineage/"] button')]);
  out.lineageAsked = (await text(a)).includes('answers with its next cycle');
  await a.goto(`${base}/admin/groups`, { waitUntil: 'load' });
  await Promise.all([a.waitForNavigation(), a.click('tbody a')]);
  out.pages.push({ name: 'group', status: 200 });
  await scan(a, 'group');
  const missing = await a.goto(`${base}/admin/users/no-such-user`, { waitUntil: 'load' });
  out.missingStatus = missing.status();
  await scan(a, 'not-found');

  await a.goto(`${base}/admin/roles`, { waitUntil: 'load' });
  await a.select('#kind', 'User');
  await a.type('#who', reader.username);
  await a.select('#role', 'reader');
  await Promise.all([a.waitForNavigation(), a.click('form[action="/admin/roles"] button[type=submit]')]);
  out.assigned = (await text(a)).includes(`${reader.username} is now reader`);
  }

  // 2. The reader: no form offered; a forged one (with the reader's own token) is refused.
  if (phase === 'reader') {
  const r = await consoleSignIn(reader);
  await r.goto(`${base}/admin/roles`, { waitUntil: 'load' });
  out.readerSeesAssignForm = (await r.$('form[action="/admin/roles"]')) !== null;
  const [forged] = await Promise.all([
    r.waitForNavigation(),
    r.evaluate((who) => {
      const form = document.createElement('form');
      form.method = 'post';
      form.action = '/admin/roles';
      const fields = { csrf: document.querySelector('input[name=csrf]').value, kind: 'User', who, role: 'global-admin' };
      for (const [name, value] of Object.entries(fields)) {
        const input = document.createElement('input');
        input.type = 'hidden';
        input.name = name;
        input.value = value;
        form.appendChild(input);
      }
      document.body.appendChild(form);
      form.submit();
    }, reader.username),
  ]);
  out.readerWriteStatus = forged.status();
  // The user asked about in phase `admin`, after a sync cycle: where each value comes from.
  await r.setBypassCSP(true);
  await r.goto(`${base}${process.env.LINEAGE_USER}`, { waitUntil: 'load' });
  out.lineageShown = (await text(r)).includes('On-premises object');
  await scan(r, 'user-lineage');
  }

  // 3. Locked out at My Apps, unlocked by the helpdesk, then signed in.
  if (phase === 'helpdesk') {
  const l = await newPage();
  for (let i = 0; i < 12 && !out.lockedOut; i++) {
    await l.goto(`${base}/myapps`, { waitUntil: 'load' });
    await Promise.all([l.waitForNavigation(), l.click('#sign-in')]);
    await enterCredentials(l, { username: locked.username, password: 'not-the-password' });
    out.lockedOut = /locked/i.test(await text(l));
  }
  const h = await consoleSignIn(helpdesk);
  await h.goto(`${base}/admin/users?q=${encodeURIComponent(locked.username)}`, { waitUntil: 'load' });
  await Promise.all([h.waitForNavigation(), h.click('tbody a')]);
  out.helpdeskSawLock = (await text(h)).includes('locked until');
  out.helpdeskOffersBlock = (await h.$('form[action$="/block"]')) !== null;
  await Promise.all([h.waitForNavigation(), h.click('form[action$="/unlock"] button')]);
  out.unlocked = (await text(h)).includes('Unlocked');
  const s = await newPage();
  await s.goto(`${base}/myapps`, { waitUntil: 'load' });
  await Promise.all([s.waitForNavigation(), s.click('#sign-in')]);
  await enterCredentials(s, locked);
  out.signedInAfterUnlock = (await text(s)).includes(`Signed in as ${locked.username}`);
  }
  // 4. Phase `allow`: a threshold stop of connector $CONNECTOR, released with the button.
  if (phase === 'allow') {
  const a = await consoleSignIn(admin);
  await a.setBypassCSP(true);
  await a.goto(`${base}/admin/sync/${process.env.CONNECTOR}`, { waitUntil: 'load' });
  const page = await text(a);
  out.heldListed = page.includes('Deletions waiting for approval');
  await scan(a, 'sync-stopped');
  const button = await a.$('form[action$="/allow-deletions"] button');
  out.buttonText = button ? await a.evaluate((b) => b.innerText, button) : null;
  if (button) {
    await Promise.all([a.waitForNavigation(), button.click()]);
    out.allowed = (await text(a)).includes('Allowed: the next cycle deletes up to');
  }
  }
  console.log(JSON.stringify(out));
} finally {
  await browser.close();
}
