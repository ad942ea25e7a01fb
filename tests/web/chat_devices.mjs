// The browser as a second device of a Python SDK user's account, and the browser
// approving (then removing) a new Python device: Debian's Chromium driven by
// playwright-core, through HAProxy. Run by tests/web/test_chat_devices.py, which answers
// the "PY {json}" lines (P, Q and P2 are its SDK clients; see its story).
// Env: LB, WEB_DIR, SHOTS, P_USER, Q_USER, P_PASSWORD, TAG.
import path from "node:path";
import { expect, finish, launch, py, step, T } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** The conversation with `username` (Note to self for P's own) is open. */
async function open(page, username) {
  await page.locator(`button.contact[data-username="${username}"]`).click();
  await expect(page, "#messages");
}

/** Keyboard only: type in the conversation's field and press Enter; the line shows. */
async function write(page, text) {
  await page.locator("#message").fill(text);
  await page.locator("#message").press("Enter");
  await expect(page, `#messages li.msg.out:has-text("${text}")`);
}

const text = (page, selector) => page.locator(selector).innerText();

try {
  step("Q writes to P while P has one device (Python)");
  const before = `before the link ${env.TAG}`;
  await py({ do: "send", from: "q", to: env.P_USER, text: before });
  await py({ do: "expect", who: "p", text: before });

  step("the page links itself to P's account: the code, its name and fingerprint");
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${env.LB}/`);
  await page.getByRole("button", { name: "Link this browser to an existing account" }).click();
  await page.getByLabel("Username", { exact: true }).fill(env.P_USER);
  await page.getByLabel("Password", { exact: true }).fill(env.P_PASSWORD);
  await page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  const name = `P's browser ${env.TAG}`;
  await page.getByLabel("Name of this device").fill(name);
  await page.getByRole("button", { name: "Show the link code" }).click();
  await expect(page, "#link-code");
  const firstCode = (await text(page, "#link-code")).trim();
  const deviceId = Number(await text(page, "#link-device-id"));

  step("Cancel goes back to the form; the next try shows a new code for the same device");
  await page.getByRole("button", { name: "Cancel" }).click();
  await expect(page, "#link-form");
  await page.getByRole("button", { name: "Show the link code" }).click();
  await expect(page, "#link-code");
  const code = (await text(page, "#link-code")).trim();
  if (code === firstCode) throw new Error("the second try shows the first code again");
  if (Number(await text(page, "#link-device-id")) !== deviceId) throw new Error(`the second try is device ${await text(page, "#link-device-id")}, not ${deviceId}`);
  const fingerprint = (await text(page, "#link-fingerprint")).trim();
  if (!/^[A-Za-z0-9_-]{54}$/.test(code)) throw new Error(`the link code reads ${JSON.stringify(code)}`);
  if ((await text(page, "#link-device-name")) !== name) throw new Error(`the page names this device ${await text(page, "#link-device-name")}`);
  await expect(page, "#link-status:has-text('Waiting for the approval')");
  await page.screenshot({ path: path.join(env.SHOTS, "chat-link.png") });

  step("P (Python) approves the code: it is shown the same name and fingerprint; the page goes on signed in");
  const shown = await py({ do: "approve", code });
  if (shown.name !== name || shown.fingerprint !== fingerprint || shown.device_id !== deviceId) {
    throw new Error(`P was shown ${JSON.stringify(shown)}, the page says ${JSON.stringify({ name, fingerprint })}`);
  }
  await expect(page, "#connection.connected");
  if ((await text(page, "#me")) !== env.P_USER) throw new Error(`signed in as ${await text(page, "#me")}`);

  step("Q writes to P: P's Python device and the browser read it; what Q wrote before the link is not in the browser");
  const fromQ = `q writes to both of p's devices ${env.TAG}`;
  await py({ do: "send", from: "q", to: env.P_USER, text: fromQ });
  await py({ do: "expect", who: "p", text: fromQ });
  await expect(page, `button.contact[data-username="${env.Q_USER}"]`);
  await open(page, env.Q_USER);
  await expect(page, `#messages li.msg.in:has-text("${fromQ}")`);
  if (await page.locator(`#messages li.msg:has-text("${before}")`).count()) throw new Error("the browser shows a message from before the link");

  step("the browser answers Q: Q reads it, P's Python device gets its own copy from the browser's device");
  const fromBrowser = `the browser answers q ${env.TAG}`;
  await write(page, fromBrowser);
  const { from } = await py({ do: "expect", who: "q", text: fromBrowser });
  if (from !== env.P_USER) throw new Error(`Q got it from ${from}`);
  const { device } = await py({ do: "expect_elsewhere", text: fromBrowser, peer: env.Q_USER });
  if (device !== shown.device_id) throw new Error(`P's copy came from device ${device}, the browser is ${shown.device_id}`);

  step("P's Python device writes to Q: the browser shows it as P's own");
  const fromP = `p writes to q from python ${env.TAG}`;
  await py({ do: "send", from: "p", to: env.Q_USER, text: fromP });
  await py({ do: "expect", who: "q", text: fromP });
  await expect(page, `#messages li.msg.out:has-text("${fromP}")`);

  step("notes to self: the browser's reaches P's Python device, and the other way");
  await page.getByLabel("Add a contact by username").fill(env.P_USER);
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await expect(page, "#conversation-title:text-is('Note to self')");
  const note = `a note from the browser ${env.TAG}`;
  await write(page, note);
  await py({ do: "expect_elsewhere", text: note, peer: env.P_USER });
  await expect(page, `#messages li.msg.out[data-status="delivered"]:has-text("${note}")`); // P's Python device acknowledged it
  const noteP = `a note from python ${env.TAG}`;
  await py({ do: "send", from: "p", to: env.P_USER, text: noteP });
  await expect(page, `#messages li.msg:has-text("${noteP}")`);

  step("after a reload the passphrase alone reopens the linked browser, its history there");
  await page.reload();
  await page.waitForSelector("#login", { timeout: T });
  await page.getByLabel("Username", { exact: true }).fill(env.P_USER);
  await page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page, "#connection.connected");
  await open(page, env.P_USER);
  await expect(page, `#messages li.msg:has-text("${noteP}")`);

  step("a new Python install P2 asks to be linked; the browser's Devices view shows it and approves it");
  const p2Name = `p2 terminal ${env.TAG}`;
  const p2 = await py({ do: "link_p2", name: p2Name });
  await page.getByRole("button", { name: "Devices" }).click();
  await expect(page, `#device-list li.device[data-device-id="${shown.device_id}"]:has-text("this device")`);
  if ((await page.locator("#device-list li.device").count()) !== 2) throw new Error(`the list shows: ${await text(page, "#device-list")}`);
  await page.getByLabel("Code shown by the new device").fill(p2.code);
  await page.getByLabel("Code shown by the new device").press("Enter");
  await expect(page, "#pending-device");
  await page.screenshot({ path: path.join(env.SHOTS, "chat-devices.png") });
  const pendingName = await text(page, "#pending-name");
  const pendingPrint = await text(page, "#pending-fingerprint");
  if (pendingName !== p2Name || pendingPrint !== p2.fingerprint) {
    throw new Error(`the browser shows ${pendingName} / ${pendingPrint}; P2 is ${p2Name} / ${p2.fingerprint}`);
  }
  // Keyboard: the focus is on what to compare (not on Approve); Tab reaches Approve.
  await page.waitForFunction(() => document.activeElement?.id === "pending-title", null, { timeout: 5000 });
  await page.keyboard.press("Tab");
  if ((await page.evaluate(() => document.activeElement?.id)) !== "approve-yes") throw new Error("Tab from the pending device does not reach Approve");
  await page.keyboard.press("Enter");
  await expect(page, `#devices-status:has-text("Linked ${p2Name} (device ${p2.device_id}).")`);
  const { devices: p2Sees } = await py({ do: "p2_linked" });
  if (p2Sees.length !== 3 || !p2Sees.includes(p2.device_id) || !p2Sees.includes(shown.device_id)) throw new Error(`P2 lists ${p2Sees}`);
  await expect(page, `#device-list li.device[data-device-id="${p2.device_id}"]`);
  if ((await page.locator("#device-list li.device").count()) !== 3) throw new Error(`the list shows: ${await text(page, "#device-list")}`);

  step("the browser removes P2 (after a confirmation); P's list has two devices");
  // This device's row offers Rename and "Remove this browser" (chat_settings.mjs removes it), not another device's Remove.
  const own = (await page.locator(`#device-list li.device[data-device-id="${shown.device_id}"] button`).allInnerTexts()).map((t) => t.trim());
  if (own.join("|") !== "Rename|Remove this browser") throw new Error(`this device's buttons: ${own}`);
  await page.getByRole("button", { name: `Remove ${p2Name} (device ${p2.device_id})` }).click();
  await page.getByRole("button", { name: "Remove device" }).click();
  await expect(page, `#devices-status:has-text("Removed ${p2Name}")`);
  await page.waitForSelector(`#device-list li.device[data-device-id="${p2.device_id}"]`, { state: "detached", timeout: T });
  const { devices: pSees } = await py({ do: "devices" });
  if (pSees.length !== 2 || pSees.includes(p2.device_id)) throw new Error(`P lists ${pSees}`);

  step("phone width: no horizontal scroll in Devices");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => document.documentElement.scrollWidth <= 390, null, { timeout: 5000 }).catch(() => {
    throw new Error("horizontal scroll at 390 px in Devices");
  });

  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  step("done");
  console.log("chat devices: ok");
} finally {
  await finish(browser);
}
