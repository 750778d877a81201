// Opens licensegate's status page in Debian's Chromium while the test sends traffic: waits for
// the charts to draw data, looks a user up with the admin token, frees the user's first device
// from the page, and saves a screenshot. Prints one JSON line:
// {samples, peakRate, devicesBefore, devicesAfter}. Usage:
//   node status.mjs <status url> <admin token> <user> <screenshot.png>
import { launch } from './browser.mjs';

const [url, adminToken, user, screenshot] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1100 } });
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(
    () => window.licensegateStatus.samples >= 4 && window.licensegateStatus.peakRate > 0,
    null,
    { timeout: 30000 },
  );
  await page.fill('#admin-token', adminToken);
  await page.fill('#user', user);
  await page.click('#lookup button[type=submit]');
  await page.waitForSelector('#devices tr', { timeout: 10000 });
  const devicesBefore = await page.$$eval('#devices tr', (rows) => rows.length);
  await page.click('#devices tr:first-child button');
  await page.waitForFunction(
    (before) => document.querySelectorAll('#devices tr').length === before - 1,
    devicesBefore,
    { timeout: 10000 },
  );
  const devicesAfter = await page.$$eval('#devices tr', (rows) => rows.length);
  await page.screenshot({ path: screenshot, fullPage: true });
  const state = await page.evaluate(() => window.licensegateStatus);
  console.log(JSON.stringify({ ...state, devicesBefore, devicesAfter, errors }));
} finally {
  await browser.close();
}
