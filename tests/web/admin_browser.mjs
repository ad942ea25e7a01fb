// What the admin console's browser scripts share: Debian's Chromium driven by
// playwright-core (never a downloaded browser), the sign-in through the provider's
// pages, screenshots, and a watch on console errors and failed requests.
import { createRequire } from "node:module";
import path from "node:path";

const env = process.env;
const require = createRequire(path.join(env.WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

export const step = (msg) => console.log(`step: ${msg}`);

export function launch() {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
}

export const shot = (page, name, fullPage = false) => page.screenshot({ path: path.join(env.SHOTS, `${name}.png`), fullPage });

// What a failed run leaves to go on: the page's address and text, and a screenshot
// (failure.png beside the others), printed before the error that stopped it.
export async function dump(page) {
  try {
    console.log(`failed at ${page.url()}`);
    console.log(`the page says: ${JSON.stringify((await page.locator("main, body").first().innerText()).slice(0, 2000))}`);
    await shot(page, "failure", true);
  } catch (e) {
    console.log(`no dump: ${e}`);
  }
}

export async function signIn(page, username, password, screenshot) {
  await page.goto(`${env.LB}/admin/`);
  await page.click("#sign-in");
  try {
    await page.waitForURL(/\/auth\/login/, { timeout: 15000 });
  } catch (e) {
    console.log(`at ${page.url()}: ${(await page.content()).slice(0, 800)}`);
    throw e;
  }
  await page.fill("#username", username);
  await page.fill("#password", password);
  if (screenshot) await shot(page, "sign-in");
  await page.click("button[type=submit]");
  await page.waitForURL(/\/admin\//);
}

/** Collects console errors and failed requests; `expected(response)` lets some through. */
export function watchErrors(page, errors, expected = () => false) {
  // (Chromium asks for /favicon.ico, which we do not have: a 404 that is no error of ours.)
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("response", (r) => r.status() >= 400 && !r.url().endsWith("/favicon.ico") && !expected(r) && errors.push(`${r.status()} ${r.url()}`));
  return errors;
}
