// The account's settings in the browser: two-step verification set up from the page, a
// log-in with it, sessions listed and one ended, devices renamed, "sign out everywhere
// else", and this browser removed from the account. Debian's Chromium driven by
// playwright-core, through HAProxy. Run by tests/web/test_chat_settings.py, which answers
// the "PY {json}" lines (P is its SDK client; see its story).
// Env: LB, WEB_DIR, SHOTS, P_USER, P_PASSWORD, AGENT, TAG.
import { createHmac } from "node:crypto";
import path from "node:path";
import { T, expect, finish, launch, py, shown, step } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** RFC 4648 base32 to bytes. */
function base32(text) {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const out = [];
  let value = 0;
  let bits = 0;
  for (const c of text.replace(/[\s=]/g, "").toUpperCase()) {
    const i = alphabet.indexOf(c);
    if (i < 0) throw new Error(`not base32: ${c}`);
    value = ((value << 5) | i) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      out.push((value >>> (bits - 8)) & 0xff);
      bits -= 8;
    }
  }
  return Buffer.from(out);
}

/** RFC 6238 TOTP (SHA-1, 6 digits, 30 s) of `secret` at Unix time `seconds`. */
function totp(secret, seconds) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(seconds / 30)));
  const mac = createHmac("sha1", base32(secret)).update(counter).digest();
  const at = mac[19] & 0x0f;
  return String((mac.readUInt32BE(at) & 0x7fffffff) % 1_000_000).padStart(6, "0");
}

// RFC 6238 appendix B's first vector (8 digits there: its last 6 are ours).
// ASCII "12345678901234567890" in base32, at T = 59 s: 94287082.
if (totp("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 59) !== "287082") throw new Error("the script's TOTP is wrong");

const text = (page, selector) => page.locator(selector).innerText();
/** Wait for `selector` (after a refusal, whose line stays until the next step: `expect`
 * would stop at it), then fail if a refusal is shown. */
async function next(page, selector) {
  await page.waitForSelector(selector, { timeout: T }).catch(async () => {
    throw new Error(`waiting for ${selector}; ${await shown(page)}`);
  });
  await expect(page, selector);
}
/** Wait for `selector` to show `wanted` (a refusal's line, say: `expect` fails on any alert). */
async function shows(page, selector, wanted) {
  await page.waitForFunction(([s, w]) => document.querySelector(s)?.textContent?.includes(w), [selector, wanted], { timeout: T }).catch(async () => {
    throw new Error(`${selector} never says ${JSON.stringify(wanted)}; ${await shown(page)}`);
  });
}

try {
  step("the page links itself to P's account (P approves its code)");
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  const passphrase = `local passphrase ${env.TAG}`;
  await page.goto(`${env.LB}/#link`);
  await page.getByLabel("Username", { exact: true }).fill(env.P_USER);
  await page.getByLabel("Password", { exact: true }).fill(env.P_PASSWORD);
  await page.getByLabel("Local passphrase").fill(passphrase);
  await page.getByLabel("Name of this device").fill(`browser ${env.TAG}`);
  await page.getByRole("button", { name: "Show the link code" }).click();
  await expect(page, "#link-code");
  const { device_id: browserDevice, p_device: pDevice } = await py({ do: "approve", code: (await text(page, "#link-code")).trim() });
  await expect(page, "#connection.connected");

  step("Two-step verification: off; a wrong password is refused with its code, nothing changes");
  await page.getByRole("button", { name: "Two-step verification" }).click();
  await expect(page, '[role=tab][aria-selected=true]:has-text("Two-step verification")');
  await shows(page, "#two-step-state", "Off: your password alone signs you in.");
  await page.getByRole("button", { name: "Set up an authenticator app" }).click();
  await page.getByLabel("Your password").fill("not the password at all");
  await page.getByLabel("Your password").press("Enter");
  await shows(page, "#two-step-error", "Failed (invalid_credentials): ");
  if (!(await page.locator("#two-step-password").count())) throw new Error("the password step is gone after a refusal");

  step("the password: the QR code, the key and the otpauth:// link; a wrong first code is refused, the key still shown");
  await page.getByLabel("Your password").fill(env.P_PASSWORD);
  await page.getByLabel("Your password").press("Enter");
  await next(page, "#totp-qr");
  const secret = (await text(page, "#totp-secret")).replace(/\s/g, "");
  if (!/^[A-Z2-7]{32}$/.test(secret)) throw new Error(`the key reads ${secret}`);
  const uri = (await page.locator("#totp-uri").textContent()).trim();
  if (!uri.startsWith("otpauth://totp/") || !uri.includes(`secret=${secret}`) || !uri.includes(env.P_USER)) throw new Error(`the link reads ${uri}`);
  if (!(await text(page, "#totp-account")).includes(env.P_USER)) throw new Error(`the app will show ${await text(page, "#totp-account")}`);
  if ((await page.getAttribute("#totp-qr", "role")) !== "img") throw new Error("the QR code is not an image to assistive technology");
  await page.screenshot({ path: path.join(env.SHOTS, "settings-totp.png") });
  const now = Date.now() / 1000;
  const right = totp(secret, now);
  const near = new Set([totp(secret, now - 30), right, totp(secret, now + 30)]);
  let wrong = "000000";
  while (near.has(wrong)) wrong = String(Number(wrong) + 1).padStart(6, "0");
  await page.getByLabel("Code from the app").fill(wrong);
  await page.getByLabel("Code from the app").press("Enter");
  await shows(page, "#two-step-error", "Failed (invalid_code): The code is not right.");
  if ((await text(page, "#totp-secret")).replace(/\s/g, "") !== secret) throw new Error("the key changed after a refusal");
  if ((await py({ do: "two_factor" })).totp) throw new Error("TOTP is on after a wrong code");

  step("the right code: ten recovery codes, Done only once they are saved; the server says TOTP is on");
  await page.getByLabel("Code from the app").fill(right);
  await page.getByLabel("Code from the app").press("Enter");
  await next(page, "#recovery-codes li");
  const codes = (await page.locator("#recovery-codes li").allInnerTexts()).map((c) => c.trim());
  if (codes.length !== 10 || !codes.every((c) => /^[A-Z0-9]{5}-[A-Z0-9]{5}$/.test(c))) throw new Error(`the recovery codes read ${codes}`);
  if (!(await page.locator("#recovery-done").isDisabled())) throw new Error("Done before the codes are said to be saved");
  await page.screenshot({ path: path.join(env.SHOTS, "settings-codes.png") });
  await page.getByLabel("I have saved these codes somewhere safe").check();
  await page.getByRole("button", { name: "Done" }).click();
  await shows(page, "#two-step-done", "The authenticator app is on");
  await shows(page, "#two-step-state", "On: an authenticator app after your password (10 recovery codes left).");
  const status = await py({ do: "two_factor" });
  if (!status.totp || status.email || status.recovery_codes_left !== 10) throw new Error(`the server says ${JSON.stringify(status)}`);

  step("codes by e-mail: the mailed code turns them on (the recovery codes stay), then off again; the account's read is slow");
  // The page reads the account again after the password step. Slowed down here (as on a
  // loaded server), the code step must not be shown before that read is done: its Confirm
  // would still be disabled and the Enter below would do nothing.
  let slowMe = true;
  await page.route("**/auth/v1/me", async (route) => {
    if (slowMe) await new Promise((resolve) => setTimeout(resolve, 1500));
    await route.continue();
  });
  await page.getByRole("button", { name: "Turn on codes by e-mail" }).click();
  await page.getByLabel("Your password").fill(env.P_PASSWORD);
  await page.getByLabel("Your password").press("Enter");
  await next(page, "#email-setup");
  const { code: mailed } = await py({ do: "setup_code" });
  await page.getByLabel("Code from the e-mail").fill(mailed);
  await page.getByLabel("Code from the e-mail").press("Enter");
  slowMe = false;
  await shows(page, "#two-step-done", "Codes by e-mail is on: after your password, each log-in asks for the code we e-mail you. Your recovery codes stay the same (10 are left).");
  await shows(page, "#two-step-state", "On: an authenticator app and codes by e-mail after your password (10 recovery codes left).");
  if (!(await py({ do: "two_factor" })).email) throw new Error("the server says e-mail codes are off");
  await page.getByRole("button", { name: "Turn off codes by e-mail" }).click();
  await page.getByLabel("Your password").fill(env.P_PASSWORD);
  await page.getByLabel("Your password").press("Enter");
  await shows(page, "#two-step-done", "Codes by e-mail is off.");
  const after = await py({ do: "two_factor" });
  if (!after.totp || after.email || after.recovery_codes_left !== 10) throw new Error(`the server says ${JSON.stringify(after)}`);

  step("log out and in again: the log-in asks for the authenticator's code");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForSelector("#login", { timeout: T });
  await page.getByLabel("Username", { exact: true }).fill(env.P_USER);
  await page.getByLabel("Password", { exact: true }).fill(env.P_PASSWORD);
  await page.getByLabel("Local passphrase").fill(passphrase);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page, "#second-factor");
  // The first code's time step is used up (each once per account): the next one's is taken.
  await page.getByLabel("Code", { exact: true }).fill(totp(secret, Date.now() / 1000 + 30));
  await page.getByRole("button", { name: "Continue" }).click();
  await expect(page, "#connection.connected");

  step("Sessions: a plain HTTP log-in (with a recovery code) is listed after this browser's; the page signs it out");
  const { session_id: other } = await py({ do: "http_login", recovery: codes[0] });
  await page.getByRole("button", { name: "Sessions: where you are signed in" }).click();
  await expect(page, `#session-list li.session[data-session-id="${other}"]`);
  const first = page.locator("#session-list li.session").first();
  if (!(await first.innerText()).includes("this browser")) throw new Error(`the first session is ${await first.innerText()}`);
  if ((await page.locator("#session-list li.session.current").count()) !== 1) throw new Error("not exactly one session is this browser's");
  const row = page.locator(`#session-list li.session[data-session-id="${other}"]`);
  if (!(await row.innerText()).includes(env.AGENT)) throw new Error(`the HTTP session reads ${await row.innerText()}`);
  await page.screenshot({ path: path.join(env.SHOTS, "settings-sessions.png") });
  await row.getByRole("button", { name: "Sign out" }).click();
  await page.locator("#session-revoke-yes").click();
  await shows(page, "#sessions-status", `Signed out ${env.AGENT}`);
  await page.waitForSelector(`#session-list li.session[data-session-id="${other}"]`, { state: "detached", timeout: T });
  const { code: refused } = await py({ do: "refresh", session_id: other });
  if (refused !== "token_revoked") throw new Error(`the ended session's refresh answers ${refused}`);

  step("Devices: the page renames itself and P's device; P's SDK reads both names from the signed list");
  await page.getByRole("tab", { name: "Devices" }).click();
  await expect(page, `#device-list li.device[data-device-id="${browserDevice}"]:has-text("this device")`);
  const mine = `Ada's browser ✓ ${env.TAG}`;
  await page.getByRole("button", { name: `Rename browser ${env.TAG} (device ${browserDevice})` }).click();
  await page.getByLabel("New name for this device").fill(mine);
  await page.getByLabel("New name for this device").press("Enter");
  await shows(page, "#devices-status", `Device ${browserDevice} is now called ${mine}.`);
  await expect(page, `#device-list li.device[data-device-id="${browserDevice}"] .device-name:text-is("${mine}")`);
  const theirs = `P's terminal ${env.TAG}`;
  await page.locator(`#device-list li.device[data-device-id="${pDevice}"]`).getByRole("button", { name: "Rename" }).click();
  await page.locator("#rename-input").fill(theirs);
  await page.getByRole("button", { name: "Save" }).click();
  await shows(page, "#devices-status", `Device ${pDevice} is now called ${theirs}.`);
  const { devices: pSees } = await py({ do: "p_devices" });
  if (pSees[browserDevice] !== mine || pSees[pDevice] !== theirs) throw new Error(`P's SDK reads ${JSON.stringify(pSees)}`);
  await page.screenshot({ path: path.join(env.SHOTS, "settings-devices.png") });
  await page.setViewportSize({ width: 390, height: 844 });
  for (const tab of ["Sessions", "Two-step verification", "Devices"]) {
    await page.getByRole("tab", { name: tab }).click();
    await page.waitForFunction(() => document.documentElement.scrollWidth <= 390, null, { timeout: 5000 }).catch(() => {
      throw new Error(`horizontal scroll at 390 px in ${tab}`);
    });
  }
  await page.setViewportSize({ width: 1200, height: 900 });

  step('"Sign out everywhere else": P\'s SDK session ends, this browser stays signed in');
  await page.getByRole("tab", { name: "Sessions" }).click();
  await page.getByRole("button", { name: "Sign out everywhere else" }).click();
  await page.locator("#sessions-others-yes").click();
  await shows(page, "#sessions-status", "Signed out of 1 other session.");
  await page.waitForFunction(() => document.querySelectorAll("#session-list li.session").length === 1, null, { timeout: T });
  const { error: pError } = await py({ do: "p_signed_out" });
  if (!pError) throw new Error("P's SDK session still works");
  if (!(await page.locator("#sessions-others").isDisabled())) throw new Error('"Sign out everywhere else" is offered with no other session');

  step("Remove this browser (confirmed): signed out, told what happens to its history; the list no longer names it");
  await page.getByRole("tab", { name: "Devices" }).click();
  await page.getByRole("button", { name: "Remove this browser from the account" }).click();
  const confirmText = await text(page, '[role=group][aria-label="Confirm removing this browser"]');
  if (!confirmText.includes("history stays here")) throw new Error(`the confirmation says ${confirmText}`);
  await page.getByRole("button", { name: "Remove this browser", exact: true }).click();
  await page.waitForSelector("#login", { timeout: T });
  await shows(page, "#signed-out-notice", "Its message history stays in this browser");
  const { devices: listed } = await py({ do: "listed", recovery: codes[1] });
  if (listed.includes(browserDevice) || !listed.includes(pDevice)) throw new Error(`the account lists ${listed}`);
  const rows = await page.evaluate(
    (user) =>
      new Promise((resolve, reject) => {
        const open = indexedDB.open("parley-chat");
        open.onerror = () => reject(open.error);
        open.onsuccess = () => {
          const keys = open.result.transaction("records").objectStore("records").getAllKeys();
          keys.onsuccess = () => resolve(keys.result.filter((k) => String(k).startsWith(`${user}/`)).map((k) => String(k).slice(user.length + 1)));
        };
      }),
    env.P_USER,
  );
  for (const gone of ["account_key", "device", "device_list"]) if (rows.includes(gone)) throw new Error(`the store still holds ${gone}: ${rows}`);
  if (!rows.includes("account") || !rows.includes("meta")) throw new Error(`the store is gone: ${rows}`);

  step("a log-in in this browser says it was removed (nothing sent) and offers to link it again");
  await page.getByLabel("Username", { exact: true }).fill(env.P_USER);
  await page.getByLabel("Password", { exact: true }).fill(env.P_PASSWORD);
  await page.getByLabel("Local passphrase").fill(passphrase);
  let logins = 0;
  page.on("request", (r) => r.url().includes("/auth/v1/login") && logins++);
  await page.getByRole("button", { name: "Log in" }).click();
  await shows(page, "#form-error", `This browser was removed from ${env.P_USER}'s devices`);
  if (!(await page.locator("#link-instead").count())) throw new Error('no "Link this browser instead"');
  if (logins) throw new Error("the removed browser sent a log-in");

  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  step("done");
  console.log("chat settings: ok");
} finally {
  await finish(browser);
}
