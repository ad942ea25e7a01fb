// The browser's side of loadtest/bench_web_room.py: a browser user in a private room of
// many members writes the room's first message (its sender key goes to every member
// device over new pairwise sessions) and then a second. Prints RESULT {json}: the
// milliseconds from Enter to the line's `accepted`, and where the page's time went in
// the first (Chrome's CPU profiler, self time by function, top 15).
// Env: LB, WEB_DIR, ME, ROOM (name), TAG.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const env = process.env;
const require = createRequire(path.join(env.WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");
const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function py(request) {
  console.log(`PY ${JSON.stringify(request)}`);
  const { value } = await replies.next();
  if (!value.startsWith("OK ")) throw new Error(`python side: ${value}`);
  return JSON.parse(value.slice(3));
}
const T = 900_000;
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
try {
  const page = await (await browser.newContext()).newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(`${env.LB}/#signup`);
  await page.getByLabel("Username", { exact: true }).fill(env.ME);
  await page.getByLabel("E-mail").fill(`${env.ME}@example.test`);
  await page.getByLabel("Password", { exact: true }).fill(`bench password ${env.TAG}`);
  await page.getByLabel("Local passphrase").fill(`bench passphrase ${env.TAG}`);
  await page.getByRole("button", { name: "Create account" }).click();
  await page.waitForSelector("#connection.connected", { timeout: 60_000 });
  await py({ do: "invite" });
  await page.getByRole("button", { name: "Refresh rooms" }).click();
  await page.getByRole("button", { name: `Accept the invitation to #${env.ROOM}` }).click();
  await page.waitForSelector(`#conversation-title:text-is("#${env.ROOM}")`, { timeout: 60_000 });

  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 1000 });
  const field = page.getByLabel(`Message to #${env.ROOM}`);
  const result = { sends: [] };
  for (const [i, text] of [`first ${env.TAG}`, `second ${env.TAG}`].entries()) {
    if (i === 0) await cdp.send("Profiler.start");
    await field.fill(text);
    const t0 = Date.now();
    await field.press("Enter");
    await page.waitForSelector(`#messages li.msg.out[data-status="accepted"]:has-text("${text}"), #form-error, [role=alert]:not(:empty)`, { timeout: T });
    const ms = Date.now() - t0;
    const accepted = await page.locator(`#messages li.msg.out[data-status="accepted"]:has-text("${text}")`).count();
    result.sends.push(ms);
    if (!accepted) result.errors = [...(result.errors ?? []), `${text}: ${(await page.innerText("body")).split("\n").slice(-2).join(" ")}`];
    if (i === 0) {
      const { profile } = await cdp.send("Profiler.stop");
      const byId = new Map(profile.nodes.map((n) => [n.id, n]));
      const self = new Map();
      let total = 0;
      profile.samples.forEach((id, k) => {
        const f = byId.get(id).callFrame;
        const key = `${f.functionName || "(anonymous)"}${f.url ? ` ${f.url.split("/").pop()}:${f.lineNumber}` : ""}`;
        const dt = profile.timeDeltas[k] ?? 0;
        total += dt;
        self.set(key, (self.get(key) ?? 0) + dt);
      });
      result.profile_ms = Math.round(total / 1000);
      result.top = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, v]) => [k, Math.round(v / 1000)]);
    }
  }
  if (errors.length) throw new Error(errors.join("; "));
  console.log(`RESULT ${JSON.stringify(result)}`);
} finally {
  await browser.close();
  process.stdin.destroy();
}
