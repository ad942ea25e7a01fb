// The audit log's "Older" in a real browser: entries written in one millisecond
// across a page boundary are all shown, once (paged by cursor, not by time).
// Run by tests/web/test_admin_console.py with LB, WEB_DIR, SHOTS, ADMIN_*, ACTION, COUNT.
import { dump, launch, signIn, step, watchErrors } from "./admin_browser.mjs";

const env = process.env;
const browser = await launch();
const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
try {
  const errors = watchErrors(page, []);
  step("admin signs in and opens the audit log");
  await signIn(page, env.ADMIN_USER, env.ADMIN_PASSWORD, false);
  await page.click("nav >> text=Audit log");
  const rows = page.locator("#audit tbody tr", { hasText: env.ACTION });
  await page.waitForSelector(`#audit >> text=${env.ACTION}`);
  step("pages back until the seeded entries are all shown");
  const older = page.locator("button", { hasText: "Older" });
  while ((await rows.count()) < Number(env.COUNT) && (await older.count()) > 0) {
    const before = await page.locator("#audit tbody tr").count();
    await older.click();
    await page.waitForFunction((n) => document.querySelectorAll("#audit tbody tr").length > n, before);
  }
  const shown = await rows.count();
  if (shown !== Number(env.COUNT)) throw new Error(`${shown} of ${env.COUNT} entries of one millisecond shown`);
  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  console.log("admin audit: ok");
} catch (e) {
  await dump(page);
  throw e;
} finally {
  await browser.close();
}
