// The admin console in a real browser (Debian's Chromium, driven by playwright-core):
// an admin signs in through the provider's pages, blocks a user and finds it in the
// audit log; a non-admin is refused. Screenshots go to SHOTS (docs/admin/).
// Run by tests/web/test_admin_console.py with LB, WEB_DIR, SHOTS, ADMIN_*, TARGET, PLAIN_*.
import { launch, shot, signIn, step, watchErrors } from "./admin_browser.mjs";

const env = process.env;
const browser = await launch();

try {
  const admin = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const page = await admin.newPage();
  const errors = watchErrors(page, []);
  // The first, unfiltered page of users answers late (as on a server with many
  // users): it must not overwrite the search the admin types meanwhile.
  const unfiltered = /\/auth\/v1\/admin\/users\?limit=25$/;
  await page.route(unfiltered, async (route) => {
    // The real first page, late, and (as with thousands of users) without the target.
    const real = await route.fetch();
    const body = await real.json();
    body.users = body.users.filter((u) => u.username !== env.TARGET);
    await new Promise((r) => setTimeout(r, 1500));
    await route.fulfill({ response: real, json: body });
  });
  const late = page.waitForResponse((r) => unfiltered.test(r.url()));
  step("admin signs in");
  await signIn(page, env.ADMIN_USER, env.ADMIN_PASSWORD, true);
  await page.waitForSelector("nav >> text=Audit log");
  await page.fill("#search", env.TARGET);
  await page.click("text=Search");
  await page.waitForSelector(`tr.clickable >> text=${env.TARGET}`);
  await late;
  // Let the page handle that answer (its body, then a render), then look again.
  await page.evaluate(() => new Promise((r) => setTimeout(r, 0)));
  await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r))));
  if ((await page.locator("tr.clickable", { hasText: env.TARGET }).count()) !== 1) {
    throw new Error("a late unfiltered page replaced the search results");
  }
  await shot(page, "users");
  step("admin blocks the user");
  await page.click(`tr.clickable >> text=${env.TARGET}`);
  await page.waitForSelector("#block");
  await page.fill("#reason", "spam (browser test)");
  await page.click("#block");
  await page.waitForSelector("#state:has-text('blocked')");
  await shot(page, "user");
  step("the block is in the audit log");
  await page.click("nav >> text=Audit log");
  await page.waitForSelector("#audit >> text=user.block");
  await shot(page, "audit");
  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  await admin.close();

  step("a non-admin is refused");
  const plain = await browser.newContext({ viewport: { width: 1280, height: 760 } });
  const p2 = await plain.newPage();
  await signIn(p2, env.PLAIN_USER, env.PLAIN_PASSWORD, false);
  await p2.waitForSelector("#refused");
  await shot(p2, "refused");
  const nav = await p2.$("nav");
  if (nav) throw new Error("a non-admin sees the console");
  await plain.close();
  console.log("admin console: ok");
} finally {
  await browser.close();
}
