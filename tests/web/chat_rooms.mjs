// Rooms in the web client: two browser users (A, B: two contexts of Debian's Chromium,
// driven by playwright-core) and the Python SDK user R, through HAProxy. Run by
// tests/web/test_chat_rooms.py, which answers the "PY {json}" lines (see its story).
// Env: LB, WEB_DIR, SHOTS, A_USER, B_USER, R_USER, TAG.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";

const env = process.env;
const require = createRequire(path.join(env.WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function py(request) {
  console.log(`PY ${JSON.stringify(request)}`);
  const { value, done } = await replies.next();
  if (done) throw new Error("the test closed stdin");
  if (!value.startsWith("OK ")) throw new Error(`python side: ${value}`);
  return JSON.parse(value.slice(3));
}
const t0 = Date.now();
const step = (msg) => console.log(`step (${((Date.now() - t0) / 1000).toFixed(1)} s): ${msg}`);
const T = 30_000;
const sent = []; // the private room's texts the browsers wrote

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});

// Fail at once with what the page says if an error line shows instead of `selector`.
async function expect(page, selector) {
  try {
    await page.waitForSelector(`${selector}, .error[role=alert]`, { timeout: T });
  } catch (e) {
    throw new Error(`waiting for ${selector}; the page shows: ${(await page.innerText("body")).slice(0, 800)}`);
  }
  const error = await page.$(".error[role=alert]");
  if (error) throw new Error(`the page says: ${await error.textContent()}`);
}

async function user(name) {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 820 } });
  const page = await ctx.newPage();
  const errors = [];
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(`${name}: ${m.text()}`));
  page.on("pageerror", (e) => errors.push(`${name}: ${e}`));
  await page.goto(`${env.LB}/#signup`);
  await page.getByLabel("Username", { exact: true }).fill(name);
  await page.getByLabel("E-mail").fill(`${name}@example.test`);
  await page.getByLabel("Password", { exact: true }).fill(`browser password ${env.TAG}!`);
  await page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  await page.getByRole("button", { name: "Create account" }).click();
  await expect(page, "#connection.connected");
  return { ctx, page, errors };
}

// Keyboard only: type in the labelled field and press Enter.
async function write(page, room, text, priv = true) {
  const field = page.getByLabel(`Message to #${room}`);
  await field.fill(text);
  await field.press("Enter");
  if (priv) sent.push(text);
  await expect(page, `#messages li.msg.out:has-text("${text}")`);
}
const sees = (page, text) => expect(page, `#messages li.msg.in:has-text("${text}")`);

async function createRoom(page, name, kind) {
  await page.getByLabel("New room name").fill(name);
  await page.getByLabel("Kind").selectOption(kind);
  await page.getByRole("button", { name: "Create room" }).click();
  await expect(page, `#conversation-title:text-is("#${name}")`);
  return page.getAttribute("section[data-room-id]", "data-room-id");
}

try {
  step("A and B sign up in their own browser contexts");
  const [a, b] = await Promise.all([user(env.A_USER), user(env.B_USER)]);

  step("A creates a private room and invites B and R by username");
  const priv = `priv${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  for (const who of [env.B_USER, env.R_USER]) {
    await a.page.getByLabel(`Invite to #${priv} by username`).fill(who);
    await a.page.getByLabel(`Invite to #${priv} by username`).press("Enter");
    await expect(a.page, `p[role=status]:has-text("Invited ${who}.")`);
  }
  await py({ do: "accept", room });
  // B with the keyboard only: focus a control, press Enter.
  await b.page.getByRole("button", { name: "Refresh rooms" }).press("Enter");
  await b.page.getByRole("button", { name: `Accept the invitation to #${priv}` }).press("Enter");
  await expect(b.page, `#conversation-title:text-is("#${priv}")`);

  step("A writes: B and R read it (A's sender key goes to both over new pairwise sessions)");
  const fromA = `a says hello to the room ${env.TAG}`;
  await write(a.page, priv, fromA);
  await py({ do: "expect", room, text: fromA });
  await sees(b.page, fromA);

  step("B writes: A and R read it");
  const fromB = `b answers the room ${env.TAG}`;
  await write(b.page, priv, fromB);
  await py({ do: "expect", room, text: fromB });
  await sees(a.page, fromB);

  step("R (Python) writes: A and B read it");
  const fromR = `r writes from python ${env.TAG}`;
  await py({ do: "send", room, text: fromR });
  await sees(a.page, fromR);
  await sees(b.page, fromR);
  await a.page.screenshot({ path: path.join(env.SHOTS, "chat-room.png") });

  step("B leaves: A's next message rotates A's sender key and reaches R");
  await b.page.getByRole("button", { name: "Leave room" }).click();
  await b.page.waitForSelector(`button.room[data-room-name="${priv}"]`, { state: "detached", timeout: T });
  const { chains: before } = await py({ do: "chains", room, user: env.A_USER });
  const afterLeave = `after b left ${env.TAG}`;
  await write(a.page, priv, afterLeave);
  await py({ do: "expect", room, text: afterLeave });
  const { chains: after } = await py({ do: "chains", room, user: env.A_USER });
  if (after !== before + 1) throw new Error(`A's sender key was not rotated after B left: R holds ${before} then ${after} chains`);

  step("a public room: A creates it, B finds it in the directory and joins, A's post shows in B's page");
  const pub = `pub${env.TAG}`;
  await createRoom(a.page, pub, "public");
  await b.page.getByLabel("Find public rooms").fill(pub);
  await b.page.getByLabel("Find public rooms").press("Enter");
  await b.page.getByRole("button", { name: `Join #${pub}` }).press("Enter");
  await expect(b.page, `#conversation-title:text-is("#${pub}")`);
  // Focus lands on the room's title; Tab goes on to its controls in order.
  const focused = () => b.page.evaluate(() => document.activeElement?.id);
  await b.page.waitForFunction(() => document.activeElement?.id === "conversation-title", null, { timeout: 5000 }).catch(async () => {
    throw new Error(`focus is on ${await focused()}, not the room`);
  });
  await b.page.keyboard.press("Tab");
  if ((await focused()) !== "leave-room") throw new Error(`Tab from the title reaches ${await focused()}`);
  await b.page.keyboard.press("Tab");
  if ((await focused()) !== "invitee") throw new Error(`the second Tab reaches ${await focused()}`);
  await expect(b.page, "#room-kind-note:has-text('Public room')");
  const post = `a public post ${env.TAG}`;
  await write(a.page, pub, post, false);
  await sees(b.page, post);
  await b.page.screenshot({ path: path.join(env.SHOTS, "chat-room-public.png") });

  step("phone width: no horizontal scroll in a room");
  await b.page.setViewportSize({ width: 390, height: 844 });
  try {
    await b.page.waitForFunction(() => document.documentElement.scrollWidth <= 390, null, { timeout: 5000 });
  } catch {
    const wide = await b.page.evaluate(() =>
      [...document.querySelectorAll("body *")]
        .filter((e) => e.getBoundingClientRect().right > 391)
        .map((e) => `${e.tagName.toLowerCase()}${e.id ? "#" + e.id : ""}.${e.className} ${Math.round(e.getBoundingClientRect().right)}`)
        .slice(0, 12),
    );
    throw new Error(`horizontal scroll at 390 px: ${wide.join(", ")}`);
  }
  await b.page.locator("#conversation-title").scrollIntoViewIfNeeded();
  await b.page.screenshot({ path: path.join(env.SHOTS, "chat-room-phone.png") });

  step("A's IndexedDB: every row sealed, no room text, no room id in a row name");
  const rows = await a.page.evaluate(async () => {
    const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
    const out = [];
    for (const { name } of await indexedDB.databases()) {
      const db = await req(indexedDB.open(name));
      for (const storeName of db.objectStoreNames) {
        const store = db.transaction(storeName).objectStore(storeName);
        const [keys, values] = [await req(store.getAllKeys()), await req(store.getAll())];
        const plain = (v) => v instanceof Uint8Array ? btoa(String.fromCharCode(...v)) : v && typeof v === "object" ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)])) : v;
        keys.forEach((k, i) => out.push({ key: String(k), value: plain(values[i]) }));
      }
      db.close();
    }
    return out;
  });
  if (rows.length < 10) throw new Error(`only ${rows.length} IndexedDB rows read`);
  for (const row of rows) {
    if (!row.key.endsWith("/meta") && Object.keys(row.value).sort().join(",") !== "ct,iv") throw new Error(`row ${row.key} is not sealed`);
    if (row.key.includes(room)) throw new Error(`row name ${row.key} shows the room id`);
  }
  const raw = JSON.stringify(rows);
  for (const text of sent) if (raw.includes(text)) throw new Error(`IndexedDB holds "${text}" in the clear`);

  const errors = [...a.errors, ...b.errors];
  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  console.log(`TEXTS ${JSON.stringify(sent)}`);
  step("done");
  console.log("chat rooms: ok");
} finally {
  await browser.close();
  replies.return?.();
  process.stdin.destroy();
}
