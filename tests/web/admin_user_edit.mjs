// A user's Edit form in a real browser, with another admin changing the same user
// meanwhile (through the API): Save sends only what this admin changed since the page
// loaded, so the other admin's change stays, and the page then shows the user as the
// API has it. Before, Save sent every field as loaded: an e-mail fix gave back an admin
// role the other admin had revoked, and ticking Admin put back the old address.
// Run by tests/web/test_admin_console.py with LB, WEB_DIR, SHOTS, ADMIN_*, OTHER_TOKEN
// (another admin's access token), TARGET_ID, EMAIL_MINE, EMAIL_OTHER.
import { dump, launch, signIn, step, watchErrors } from "./admin_browser.mjs";

const env = process.env;
const browser = await launch();

// The other admin, through the API.
async function other(method, body) {
  const resp = await fetch(`${env.LB}/auth/v1/admin/users/${env.TARGET_ID}`, {
    method,
    headers: { Authorization: `Bearer ${env.OTHER_TOKEN}`, ...(body ? { "content-type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (resp.status !== 200) throw new Error(`${method} by the other admin: ${resp.status} ${await resp.text()}`);
  return resp.json();
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

let page;
try {
  page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
  const errors = watchErrors(page, []);
  const sent = []; // the bodies of the console's PATCHes of the user
  page.on("request", (r) => r.method() === "PATCH" && sent.push(r.postDataJSON()));
  const admin = page.locator("form.grid label.check input[type=checkbox]");
  const email = page.locator("form.grid label", { hasText: "E-mail" }).locator("input");
  const save = page.locator("form.grid button[type=submit]");
  // The form as the page shows it, once it shows what is wanted.
  const shows = async (what, want) => {
    try {
      await page.waitForFunction(
        ([e, a]) => {
          const inputs = document.querySelectorAll("form.grid input");
          const box = document.querySelector("form.grid label.check input");
          return inputs[1]?.value === e && box?.checked === a;
        },
        [want.email, want.admin],
        { timeout: 15000 },
      );
    } catch {
      throw new Error(`${what}: the form shows ${await email.inputValue()}, admin ${await admin.isChecked()}`);
    }
  };

  step("admin signs in and opens the user (an admin)");
  await signIn(page, env.ADMIN_USER, env.ADMIN_PASSWORD, false);
  await page.waitForSelector("nav");
  await page.goto(`${env.LB}/admin/users/${env.TARGET_ID}`);
  await page.waitForSelector("#state");
  const loaded = await other("GET");
  await shows("as loaded", { email: loaded.email, admin: true });

  step("another admin revokes the admin role; this one fixes only the e-mail address");
  if (!same((await other("PATCH", { roles: ["user"] })).roles, ["user"])) throw new Error("the role was not revoked");
  await email.fill(env.EMAIL_MINE);
  await save.click();
  await page.waitForSelector("[role=status] >> text=Saved.");
  let now = await other("GET");
  if (now.email !== env.EMAIL_MINE || !same(now.roles, ["user"])) {
    throw new Error(`after the e-mail fix the user is ${now.email} ${JSON.stringify(now.roles)}`);
  }
  if (!same(sent, [{ email: env.EMAIL_MINE }])) throw new Error(`sent: ${JSON.stringify(sent)}`);
  // The page shows the API's answer: no admin any more.
  await shows("after the e-mail fix", { email: env.EMAIL_MINE, admin: false });

  step("another admin changes the e-mail address; this one only makes the user an admin");
  if ((await other("PATCH", { email: env.EMAIL_OTHER })).email !== env.EMAIL_OTHER) throw new Error("no new address");
  await admin.check();
  await save.click();
  await page.waitForSelector("[role=status] >> text=Saved.");
  now = await other("GET");
  if (now.email !== env.EMAIL_OTHER || !same(now.roles, ["user", "admin"])) {
    throw new Error(`after making an admin the user is ${now.email} ${JSON.stringify(now.roles)}`);
  }
  if (!same(sent[1], { roles: ["user", "admin"] })) throw new Error(`sent: ${JSON.stringify(sent)}`);
  await shows("after making an admin", { email: env.EMAIL_OTHER, admin: true });

  step("a Save with nothing changed sends nothing");
  await email.fill("typed-and-undone@example.test");
  await email.fill(env.EMAIL_OTHER);
  await save.click();
  await page.waitForSelector("[role=status] >> text=Nothing to change.");
  if (sent.length !== 2) throw new Error(`sent: ${JSON.stringify(sent)}`);

  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  console.log("admin user edit: ok");
} catch (e) {
  if (page) await dump(page);
  throw e;
} finally {
  await browser.close();
}
