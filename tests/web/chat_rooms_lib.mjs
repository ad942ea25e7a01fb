// What the rooms' browser scripts share (chat_rooms.mjs, chat_rooms_moderation.mjs):
// the "PY {json}" dialogue with the pytest side, Debian's Chromium, a browser user
// signed up in its own context (logged out and in again), and the page helpers.
// Env: LB, WEB_DIR, TAG.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const env = process.env;
const require = createRequire(path.join(env.WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

export const T = 30_000;

const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
/** Ask the pytest side (its PythonSide.act) and wait for its answer. */
export async function py(request) {
  console.log(`PY ${JSON.stringify(request)}`);
  const { value, done } = await replies.next();
  if (done) throw new Error("the test closed stdin");
  if (!value.startsWith("OK ")) throw new Error(`python side: ${value}`);
  return JSON.parse(value.slice(3));
}

const t0 = Date.now();
export const step = (msg) => console.log(`step (${((Date.now() - t0) / 1000).toFixed(1)} s): ${msg}`);

export async function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

/** Close the browser and let go of stdin (so node exits). */
export async function finish(browser) {
  await browser.close();
  replies.return?.();
  process.stdin.destroy();
}

/** What a failing wait reports: every alert and status line, then the page's text (the
 * sidebar comes first in the body, so its end is where the open view is). */
export async function shown(page) {
  const lines = await page.$$eval("[role=alert], [role=status]", (els) => els.map((e) => e.textContent?.trim()).filter(Boolean));
  const body = await page.innerText("body");
  return `alerts/status: ${JSON.stringify(lines)}; the page's text (${body.length} chars): ${body.length > 2400 ? `${body.slice(0, 600)} … ${body.slice(-1800)}` : body}`;
}

/** Fail at once with what the page says if an error line shows instead of `selector`. */
export async function expect(page, selector) {
  try {
    await page.waitForSelector(`${selector}, .error[role=alert]`, { timeout: T });
  } catch (e) {
    throw new Error(`waiting for ${selector}; ${await shown(page)}`);
  }
  const error = await page.$(".error[role=alert]");
  if (error) throw new Error(`the page says: ${await error.textContent()}`);
}

/** A browser user signed up in a context of its own; `errors` collects console errors. */
export async function user(browser, name) {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(`${name}: ${m.text()}`));
  page.on("pageerror", (e) => errors.push(`${name}: ${e}`));
  // Every frame the page's sockets send (text), for scripts that look at the protocol.
  const framesSent = [];
  page.on("websocket", (ws) => ws.on("framesent", (ev) => typeof ev.payload === "string" && framesSent.push(ev.payload)));
  await page.goto(`${env.LB}/#signup`);
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("E-mail").fill(`${name}@example.test`);
  await page.getByLabel("Password", { exact: true }).fill(`browser password ${env.TAG}!`);
  await page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page, "#connection.connected");
  return { ctx, page, errors, framesSent };
}

/** Log out of the page, back to the log-in form. */
export async function logOut(page) {
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForSelector("#login", { timeout: T });
}

/** Log in again in a page whose browser has the user's store (the password and the
 * passphrase of `user`), until the socket is connected. */
export async function logIn(page, name) {
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("Password", { exact: true }).fill(`browser password ${env.TAG}!`);
  await page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  await page.getByRole("button", { name: "Log in" }).click();
  await expect(page, "#connection.connected");
}

/** Keyboard only: type in the room's labelled field and press Enter; the line shows. */
export async function write(page, room, text) {
  const field = page.getByLabel(`Message to #${room}`);
  await field.fill(text);
  await field.press("Enter");
  await expect(page, `#messages li.msg.out:has-text("${text}")`);
}

export const sees = (page, text) => expect(page, `#messages li.msg.in:has-text("${text}")`);

/** Create a room in the page; its id. */
export async function createRoom(page, name, kind) {
  await page.getByLabel("New room name").fill(name);
  await page.getByLabel("Kind").selectOption(kind);
  await page.getByRole("button", { name: "Create room" }).click();
  await expect(page, `#conversation-title:text-is("#${name}")`);
  return page.getAttribute("section[data-room-id]", "data-room-id");
}

export async function invite(page, room, who) {
  await page.getByLabel(`Invite to #${room} by username`).fill(who);
  await page.getByLabel(`Invite to #${room} by username`).press("Enter");
  await expect(page, `p[role=status]:has-text("Invited ${who}.")`);
}
