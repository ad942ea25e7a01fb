// The audit log shows what a rooms admin action changed and who did it, in a real
// browser. The rooms service keeps before/after only in the entry's own fields (the
// auth service repeats them in details) and records its actor by id: before, the
// Details column showed nothing for room.kind and room.close and only the reason for
// room.remove_member, and the Who column the admin's id instead of their username.
// Run by tests/web/test_admin_console.py with LB, WEB_DIR, SHOTS, ADMIN_*, ADMIN_ID,
// ROOM_ID, MEMBER_ID, REASON.
import { dump, launch, signIn, step, watchErrors } from "./admin_browser.mjs";

const env = process.env;
const browser = await launch();

let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = watchErrors(page, []);
  step("admin signs in and opens the audit log");
  await signIn(page, env.ADMIN_USER, env.ADMIN_PASSWORD, false);
  await page.click("nav >> text=Audit log");
  await page.waitForSelector("#audit tbody tr");

  // The room's row of an action; its cells: when, who, service, action, target, details.
  const row = (action) =>
    page.locator("#audit tbody tr").filter({ has: page.locator(`td code:text-is("${action}")`) })
      .filter({ has: page.locator(`span[title="${env.ROOM_ID}"]`) });
  const details = async (action) => {
    const r = row(action);
    if ((await r.count()) !== 1) throw new Error(`${await r.count()} rows of ${action} for the room`);
    return (await r.locator("td").nth(5).innerText()).replace(/\s+/g, " ");
  };
  const reason = JSON.stringify({ reason: env.REASON });
  const want = {
    "room.kind": ["kind: public → private", reason],
    "room.close": ["state: open → closed", reason],
    "room.remove_member": [`before: ${JSON.stringify({ user_id: env.MEMBER_ID, role: "member" })}`, reason],
  };
  for (const [action, parts] of Object.entries(want)) {
    step(`${action}: what changed, and who did it (by name)`);
    const shown = await details(action);
    for (const part of parts) {
      if (!shown.includes(part)) throw new Error(`${action} details: ${JSON.stringify(shown)}, without ${part}`);
    }
    const who = row(action).locator("td").nth(1);
    try {
      await who.locator(`a:text-is("${env.ADMIN_USER}")`).waitFor({ timeout: 15000 });
    } catch {
      throw new Error(`${action} by ${JSON.stringify(await who.innerText())}, not ${env.ADMIN_USER}`);
    }
    // The name links to the admin's page.
    const href = await who.locator("a").getAttribute("href");
    if (!href.endsWith(`/admin/users/${env.ADMIN_ID}`)) throw new Error(`${action}: the name links to ${href}`);
  }
  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  console.log("admin audit rooms: ok");
} catch (e) {
  if (page) await dump(page);
  throw e;
} finally {
  await browser.close();
}
