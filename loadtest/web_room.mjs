// The browser's side of loadtest/bench_web_room.py: a browser user in a private room of
// many members writes the room's first message (its sender key goes to every member
// device over new pairwise sessions) and then a second. Prints RESULT {json}: the
// milliseconds from Enter to the line's `accepted`, and where the page's time went in
// the first (Chrome's CPU profiler, self time by function, top 15).
// Env: LB, WEB_DIR, ME, ROOM (name), TAG.
// The helpers the browser tests share: the PY dialogue, Debian's Chromium, a signed-up user.
import { finish, launch, py, user } from "../tests/web/chat_rooms_lib.mjs";

const env = process.env;
const T = 900_000;
const browser = await launch();
try {
  const { page, errors } = await user(browser, env.ME);
  await py({ do: "invite" });
  await page.getByRole("button", { name: "Refresh rooms" }).click();
  await page.getByRole("button", { name: `Accept the invitation to #${env.ROOM}` }).click();
  await page.waitForSelector(`#conversation-title:text-is("#${env.ROOM}")`, { timeout: 60_000 });

  // What the page asked of the servers during each send, and when (ms after Enter).
  let t0 = 0;
  const log = [];
  const cdp = await page.context().newCDPSession(page);
  // The socket was opened at log-in: its frames are seen through the protocol.
  await cdp.send("Network.enable");
  cdp.on("Network.webSocketFrameSent", (e) => {
    const op = String(e.response.payloadData).match(/"op":"([a-z_]+)"/)?.[1];
    if (op) log.push([Date.now() - t0, `ws sent ${op}`]);
  });
  cdp.on("Network.webSocketFrameReceived", (e) => {
    for (const m of String(e.response.payloadData).matchAll(/"op":"([a-z_]+)"/g)) log.push([Date.now() - t0, `ws got ${m[1]}`]);
  });
  await cdp.send("Profiler.enable");
  await cdp.send("Profiler.setSamplingInterval", { interval: 1000 });
  page.on("requestfinished", (r) => {
    const path = new URL(r.url()).pathname.replace(/[0-9a-f]{24,}/g, "{id}");
    log.push([Date.now() - t0, `${r.method()} ${path}`]);
  });
  const field = page.getByLabel(`Message to #${env.ROOM}`);
  const result = { sends: [] };
  for (const [i, text] of [`first ${env.TAG}`, `second ${env.TAG}`].entries()) {
    if (i === 0) await cdp.send("Profiler.start");
    await field.fill(text);
    log.length = 0;
    t0 = Date.now();
    await field.press("Enter");
    await page.waitForSelector(`#messages li.msg.out[data-status="accepted"]:has-text("${text}"), #form-error, [role=alert]:not(:empty)`, { timeout: T });
    const ms = Date.now() - t0;
    const accepted = await page.locator(`#messages li.msg.out[data-status="accepted"]:has-text("${text}")`).count();
    result.sends.push(ms);
    if (!accepted) result.errors = [...(result.errors ?? []), `${text}: ${(await page.innerText("body")).split("\n").slice(-2).join(" ")}`];
    // Per kind: how many, the first and the last (ms after Enter).
    const kinds = new Map();
    for (const [at, kind] of log) {
      const k = kinds.get(kind) ?? { n: 0, first: at, last: at };
      k.n += 1;
      k.last = at;
      kinds.set(kind, k);
    }
    const timeline = [...kinds.entries()].sort((a, b) => a[1].first - b[1].first).map(([k, v]) => [k, v.n, v.first, v.last]);
    if (i === 1) result.timeline2 = timeline;
    if (i === 0) {
      result.timeline = timeline;
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
  await finish(browser);
}
