// Browser end-to-end run of the evlounge pages in headless Chromium, driven by
// tests/web_e2e.rs, which starts the broker and the daemon and publishes the telemetry.
//
// Env: EVL_BASE (daemon URL), EVL_TOKEN (staff token), EVL_ARTIFACTS (screenshot dir),
// EVL_CHROMIUM (browser, default /usr/bin/chromium).
// Protocol on stdout: "PHASE <name>" lines ask the Rust side to act and answer on stdin
// with "GO <name>"; "E2E OK" ends a good run; "E2E FAIL <why>" (and exit 1) a bad one.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync } from 'node:fs';

const base = process.env.EVL_BASE;
const token = process.env.EVL_TOKEN;
const out = process.env.EVL_ARTIFACTS || 'target/e2e-artifacts';
mkdirSync(out, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const answers = [];
let waiter = null;
stdin.on('line', (l) => { answers.push(l.trim()); if (waiter) waiter(); });

async function phase(name) {
  console.log(`PHASE ${name}`);
  const deadline = Date.now() + 60000;
  while (!answers.includes(`GO ${name}`)) {
    if (Date.now() > deadline) throw new Error(`no GO for ${name}`);
    await new Promise((r) => { waiter = r; setTimeout(r, 200); });
  }
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

const browser = await chromium.launch({
  executablePath: process.env.EVL_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const errors = [];
function watch(page, name) {
  page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
}

try {
  // (b) The guest's bay page: subscribe on the MQTT channel while the car charges.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2 });
  const bay = await phone.newPage();
  watch(bay, 'bay');
  await bay.goto(`${base}/bay/milano/hpc-3?lang=en`);
  await bay.waitForSelector('.card[data-state="charging"]', { timeout: 20000 });
  const promise = await bay.textContent('[data-testid="promise"]');
  check(/80 %/.test(promise), `promise names the target: ${promise}`);
  await bay.check('input[name="channel"][value="mqtt"]', { force: true });
  await bay.fill('#address', 'guest-e2e');
  await bay.selectOption('#lang', 'en');
  await bay.screenshot({ path: `${out}/bay-form.png`, fullPage: true });
  await bay.click('#submit');
  await bay.waitForSelector('[data-testid="linked"]', { timeout: 10000 });
  const stored = await bay.evaluate(() => localStorage.getItem('evlounge:guest:milano/hpc-3'));
  check(stored && JSON.parse(stored).token, 'token kept in localStorage');
  await bay.screenshot({ path: `${out}/bay-linked.png`, fullPage: true });
  // A reload finds the link again (looked up with the stored token).
  await bay.reload();
  await bay.waitForSelector('[data-testid="linked"]', { timeout: 10000 });
  console.log('LINKED');

  // (a) The lounge board turns the bay "ready" live, without a reload.
  const tv = await browser.newContext({ viewport: { width: 1920, height: 1080 } });
  const board = await tv.newPage();
  watch(board, 'board');
  await board.goto(`${base}/`);
  await board.waitForSelector('.card[data-charger="hpc-3"][data-state="charging"]', { timeout: 20000 });
  check(await board.isVisible('text=Taycan 4S'), 'the vehicle label is shown');
  await board.evaluate(() => { window.__sameDocument = true; });
  await board.screenshot({ path: `${out}/board-charging.png` });
  await phase('complete');
  await board.waitForSelector('.card[data-charger="hpc-3"][data-state="ready"]', { timeout: 30000 });
  check(await board.evaluate(() => window.__sameDocument === true), 'no reload happened');
  const pill = await board.textContent('.card[data-charger="hpc-3"] [data-testid="status"]');
  check(pill.trim() === 'Pronta', `Italian by default: ${pill}`);
  await board.screenshot({ path: `${out}/board-ready.png` });
  // The bay page followed too.
  await bay.waitForSelector('.card[data-state="ready"]', { timeout: 30000 });
  await bay.screenshot({ path: `${out}/bay-ready.png`, fullPage: true });

  // (c) Staff: the login form without the token, charts with it.
  const desk = await browser.newContext({ viewport: { width: 1400, height: 900 } });
  const staff = await desk.newPage();
  watch(staff, 'staff');
  const resp = await staff.goto(`${base}/staff`);
  check(resp.status() === 401, `staff without token: ${resp.status()}`);
  check(await staff.isVisible('form#login'), 'login form shown');
  await staff.screenshot({ path: `${out}/staff-login.png` });
  await staff.fill('#token', 'wrong');
  await staff.click('button[type="submit"]');
  await staff.waitForSelector('.error', { timeout: 10000 });
  await staff.fill('#token', token);
  await staff.click('button[type="submit"]');
  await staff.waitForSelector('#per-charger', { timeout: 20000 });
  const bars = await staff.locator('.chart svg rect').count();
  const lines = await staff.locator('.chart svg path').count();
  check(bars > 0, 'bar charts drawn');
  check(lines > 0, 'line charts drawn');
  const sessions = await staff.locator('#sessions tbody tr').count();
  check(sessions >= 1, `sessions table has rows: ${sessions}`);
  const kpi = await staff.textContent('#kpi-sessions b');
  check(Number(kpi) >= 1, `sessions KPI: ${kpi}`);
  check(await staff.getAttribute('a[href^="/api/v1/sessions?format=csv"]', 'href'), 'CSV export link');
  await staff.screenshot({ path: `${out}/staff-dashboard.png`, fullPage: true });

  check(errors.length === 0, `page errors: ${errors.join('; ')}`);
  console.log('E2E OK');
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(`E2E FAIL ${e.message.split('\n')[0]}`);
  console.error(e);
  await browser.close().catch(() => {});
  process.exit(1);
}
