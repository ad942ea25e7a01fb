// The chat client in a real browser (Debian's Chromium, driven by playwright-core),
// talking to Python SDK users through HAProxy. Run by tests/web/test_chat_browser.py,
// which answers the "PY {json}" lines this script prints (see that file for the story).
// Env: LB, WEB_DIR, SHOTS, BROWSER_USER, P_USER, Q_USER, TAG.
import { createRequire } from "node:module";
import path from "node:path";
import readline from "node:readline";
import { webcrypto } from "node:crypto";

const env = process.env;
const require = createRequire(path.join(env.WEB_DIR, "package.json"));
const { chromium } = require("playwright-core");

// -- the Python side, over stdin/stdout ----------------------------------------------
const replies = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function py(request) {
  console.log(`PY ${JSON.stringify({ who: "p", ...request })}`);
  const { value, done } = await replies.next();
  if (done) throw new Error("the test closed stdin");
  if (!value.startsWith("OK ")) throw new Error(`python side: ${value}`);
  return JSON.parse(value.slice(3));
}
const t0 = Date.now();
const step = (msg) => console.log(`step (${((Date.now() - t0) / 1000).toFixed(1)} s): ${msg}`);

const passphrase = `local passphrase ${env.TAG}`;
const password = `browser password ${env.TAG}!`;
const me = env.BROWSER_USER;
const sent = []; // what the browser wrote
const BACKLOG = 1000; // messages waiting for the browser at one log-in (its history in chunks)
const SHOWN = 200; // the newest lines a conversation shows (src/app/history.ts SHOWN)
const T = 60_000;

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
});
const shot = (page, name) => page.screenshot({ path: path.join(env.SHOTS, `${name}.png`) });

async function openConversation(page, username) {
  await page.click(`button.contact[data-username="${username}"]`, { timeout: T });
  await page.waitForSelector(`#conversation-title:has-text("${username}")`);
}

async function write(page, text) {
  // Keyboard only: type in the labelled field and press Enter.
  await page.getByLabel(/^Message to /).fill(text);
  await page.getByLabel(/^Message to /).press("Enter");
  sent.push(text);
  await page.waitForSelector(`#messages li.msg.out:has-text("${text}")`, { timeout: T });
}

// Wait for `selector`, or fail at once with the page's error line if one shows.
async function expectScreen(page, selector) {
  try {
    await page.waitForSelector(`${selector}, #form-error`, { timeout: T });
  } catch (e) {
    throw new Error(`waiting for ${selector}; the page shows: ${(await page.innerText("body")).slice(0, 600)}`);
  }
  const error = await page.$("#form-error");
  if (error) throw new Error(`the page says: ${await error.textContent()}`);
}

const incoming = (page, text) => page.waitForSelector(`#messages li.msg.in:has-text("${text}")`, { timeout: T });

async function logIn(page, pw = password) {
  await page.waitForSelector("#login"); // (log-out ends before the form shows)
  await page.getByLabel("Username", { exact: true }).fill(me);
  await page.getByLabel("Password", { exact: true }).fill(pw);
  await page.getByLabel("Local passphrase").fill(passphrase);
}

async function readIndexedDb(page) {
  return page.evaluate(async () => {
    const req = (r) => new Promise((resolve, reject) => { r.onsuccess = () => resolve(r.result); r.onerror = () => reject(r.error); });
    const names = (await indexedDB.databases()).map((d) => d.name);
    const out = { names, records: [] };
    for (const name of names) {
      const db = await req(indexedDB.open(name));
      for (const storeName of db.objectStoreNames) {
        const store = db.transaction(storeName).objectStore(storeName);
        const keys = await req(store.getAllKeys());
        const values = await req(store.getAll());
        const plain = (v) => {
          if (v instanceof Uint8Array) return { bytes: btoa(String.fromCharCode(...v)) };
          if (Array.isArray(v)) return v.map(plain);
          if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
          return v;
        };
        keys.forEach((k, i) => out.records.push({ db: name, store: storeName, key: String(k), value: plain(values[i]) }));
      }
      db.close();
    }
    return out;
  });
}

// The vault's derivation (web/chat/src/app/vault.ts), to open what we read raw.
async function openVault(dump) {
  const subtle = webcrypto.subtle;
  const te = new TextEncoder();
  const meta = dump.records.find((r) => r.key === `${me}/meta`).value;
  const salt = Buffer.from(meta.salt, "base64url");
  const material = await subtle.importKey("raw", te.encode(passphrase.normalize("NFKC")), "PBKDF2", false, ["deriveBits"]);
  const ikm = await subtle.deriveBits({ name: "PBKDF2", hash: "SHA-256", salt, iterations: meta.iterations }, material, 256);
  const hkdf = await subtle.importKey("raw", ikm, "HKDF", false, ["deriveKey"]);
  const aes = await subtle.deriveKey({ name: "HKDF", hash: "SHA-256", salt: new Uint8Array(0), info: te.encode("parley-web/vault/aes") }, hkdf, { name: "AES-GCM", length: 256 }, false, ["encrypt", "decrypt"]);
  const open = async (key) => {
    const v = dump.records.find((r) => r.key === key).value;
    const pt = await subtle.decrypt(
      { name: "AES-GCM", iv: Buffer.from(v.iv.bytes, "base64"), additionalData: te.encode(key) },
      aes,
      Buffer.from(v.ct.bytes, "base64"),
    );
    return JSON.parse(new TextDecoder().decode(pt));
  };
  // A row sealed as the vault seals it (base64 for the page).
  open.seal = async (key, value) => {
    const iv = webcrypto.getRandomValues(new Uint8Array(12));
    const ct = await subtle.encrypt({ name: "AES-GCM", iv, additionalData: te.encode(key) }, aes, te.encode(JSON.stringify(value)));
    return { iv: Buffer.from(iv).toString("base64"), ct: Buffer.from(ct).toString("base64") };
  };
  return open;
}

/** Write sealed rows into the page's IndexedDB and delete others, in one transaction. */
async function writeRows(page, puts, deletes) {
  await page.evaluate(
    async ({ puts, deletes }) => {
      const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const db = await new Promise((resolve, reject) => {
        const r = indexedDB.open("parley-chat");
        r.onsuccess = () => resolve(r.result);
        r.onerror = () => reject(r.error);
      });
      const tx = db.transaction("records", "readwrite");
      for (const [key, { iv, ct }] of puts) tx.objectStore("records").put({ iv: bytes(iv), ct: bytes(ct) }, key);
      for (const key of deletes) tx.objectStore("records").delete(key);
      await new Promise((resolve, reject) => {
        tx.oncomplete = resolve;
        tx.onerror = () => reject(tx.error);
      });
      db.close();
    },
    { puts, deletes },
  );
}

try {
  const ctx = await browser.newContext({ viewport: { width: 1200, height: 780 } });
  // Every IndexedDB write transaction the page opens, with its durability (the vault
  // asks for "strict": on the disk, not only handed to the OS, before acks follow).
  await ctx.addInitScript(() => {
    const open = IDBDatabase.prototype.transaction;
    window.__idbWrites = [];
    IDBDatabase.prototype.transaction = function (names, mode, options) {
      if (mode === "readwrite") window.__idbWrites.push(options?.durability ?? "default");
      return open.call(this, names, mode, options);
    };
  });
  const page = await ctx.newPage();
  const errors = [];
  const wsErrors = []; // error frames the gateway sent the page
  page.on("websocket", (ws) =>
    ws.on("framereceived", ({ payload }) => {
      const frame = JSON.parse(String(payload));
      if (frame.op === "error") wsErrors.push(frame.code);
    }),
  );
  page.on("console", (m) => m.type() === "error" && !m.text().startsWith("Failed to load resource") && errors.push(m.text()));
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("response", (r) => r.status() >= 400 && !r.url().endsWith("/favicon.ico") && errors.push(`${r.status()} ${r.url()}`));

  step("the page is served with a strict CSP");
  const first = await page.goto(`${env.LB}/#signup`);
  const csp = first.headers()["content-security-policy"] ?? "";
  if (!csp.includes("script-src 'self'") || !csp.includes("connect-src 'self';") || /unsafe|https?:/.test(csp)) {
    throw new Error(`weak CSP on /: ${csp}`);
  }

  step("the browser user signs up");
  await page.getByLabel("Username", { exact: true }).fill(me);
  await page.getByLabel("E-mail").fill(`${me}@example.test`);
  await page.getByLabel("Password", { exact: true }).fill(password);
  await page.getByLabel("Local passphrase").fill(passphrase);
  await shot(page, "chat-signup");
  await page.getByRole("button", { name: "Create account" }).click();
  await page.waitForSelector("#me", { timeout: T });
  await page.waitForSelector("#connection.connected", { timeout: T });

  step("P writes first (Python starts PQXDH); the browser answers");
  const fromP = `hello browser, from python ${env.TAG}`;
  await py({ do: "send", to: me, text: fromP });
  await openConversation(page, env.P_USER);
  await incoming(page, fromP);
  const reply = `hello python, from the browser ${env.TAG}`;
  await write(page, reply);
  await py({ do: "expect", text: reply });
  await page.waitForSelector(`#messages li.msg.out[data-status="delivered"]:has-text("${reply}")`, { timeout: T });

  step("the browser reports a message from P (keyboard, behind a confirmation): the admins' queue holds its text");
  const toReport = `report this one ${env.TAG}`;
  await py({ do: "send", to: me, text: toReport, track: false });
  const reported = page.locator(`#messages li.msg.in:has-text("${toReport}")`);
  await reported.waitFor({ timeout: T });
  await reported.getByRole("button", { name: /^Report message/ }).focus();
  await page.keyboard.press("Enter");
  await reported.getByText("admins will see this message's text").waitFor({ timeout: T });
  await reported.getByRole("button", { name: "Report to admins" }).focus();
  await page.keyboard.press("Enter");
  await reported.locator(".mod-note").waitFor({ timeout: T });
  const note = await reported.locator(".mod-note").innerText();
  if (note !== "Reported") throw new Error(`the report failed: ${note}`);
  const { texts: queued } = await py({ do: "admin_reports" });
  if (!queued.includes(toReport)) throw new Error(`not in the admins' queue: ${JSON.stringify(queued)}`);

  step("P unsends a message: the browser verifies the tombstone and shows it removed");
  const oops = `sent by mistake ${env.TAG}`;
  const { client_id: oopsId } = await py({ do: "send", to: me, text: oops });
  await incoming(page, oops);
  await py({ do: "unsend", client_id: oopsId });
  await page.waitForSelector(`#messages li.msg.in.removed:has-text("Message removed by its sender")`, { timeout: T });
  if ((await page.locator(`#messages li:has-text("${oops}")`).count()) !== 0) throw new Error("the unsent text is still shown");

  step("the browser removes its own message for everyone: P's device verifies the tombstone");
  const takeBack = `the browser takes this back ${env.TAG}`;
  await write(page, takeBack);
  await py({ do: "expect", text: takeBack });
  const own = page.locator(`#messages li.msg.out:has-text("${takeBack}")`);
  const ownId = await own.getAttribute("data-server-id");
  await own.getByRole("button", { name: /^Remove for everyone/ }).click();
  await page.waitForSelector(`#messages li.msg.out.removed[data-server-id="${ownId}"], #messages li.msg.out .mod-note:has-text("Failed")`, { timeout: T });
  if ((await own.locator(".mod-note").count()) && (await own.locator(".mod-note").innerText()).startsWith("Failed")) {
    throw new Error(`unsend failed: ${await own.locator(".mod-note").innerText()}`);
  }
  const removed = await py({ do: "expect_removed", server_id: ownId });
  if (removed.by !== "sender") throw new Error(`unexpected removal: ${JSON.stringify(removed)}`);
  if ((await page.locator(`#messages li:has-text("${takeBack}")`).count()) !== 0) throw new Error("the removed text is still shown");

  step("the browser adds Q by username and writes first (the browser starts PQXDH) while the key directory holds its answer");
  // Q's prekey bundles are held until released: the first message waits for them.
  let release;
  const released = new Promise((resolve) => (release = resolve));
  let claimed;
  const claiming = new Promise((resolve) => (claimed = resolve));
  const bundles = "**/keys/v1/users/*/bundles*";
  let held = false;
  await page.route(bundles, async (route) => {
    if (!held) {
      held = true;
      claimed();
      await released;
    }
    await route.continue();
  });
  await page.getByLabel("Add a contact by username").fill(env.Q_USER);
  await page.getByLabel("Add a contact by username").press("Enter");
  await page.waitForSelector(`#conversation-title:has-text("${env.Q_USER}")`, { timeout: T });
  const toQ = `first contact from the browser ${env.TAG}`;
  const toQ2 = `written while the first was under way ${env.TAG}`;
  const field = page.getByLabel(/^Message to /);
  const emptied = () => page.waitForFunction(() => document.querySelector("#message")?.value === "", null, { timeout: T });
  await field.fill(toQ);
  await field.press("Enter");
  await claiming;
  await emptied(); // at once, while the first message waits
  await field.press("Enter"); // a second Enter in the emptied field sends nothing twice
  await field.fill(toQ2);
  await field.press("Enter");
  await emptied();
  sent.push(toQ, toQ2);

  step("leaving the page while a message is under way: the browser asks first");
  const asked = new Promise((resolve) => page.once("dialog", (d) => d.dismiss().then(() => resolve(d.type()))));
  await page.close({ runBeforeUnload: true });
  if ((await asked) !== "beforeunload") throw new Error("leaving with a message under way asked nothing");
  if (page.isClosed()) throw new Error("the page closed with a message under way");

  step("released: Q gets both, in the order written, once each");
  release();
  const { texts: atQ } = await py({ who: "q", do: "expect_texts", n: 2 });
  if (JSON.stringify(atQ) !== JSON.stringify([toQ, toQ2])) throw new Error(`Q got ${JSON.stringify(atQ)}`);
  await page.waitForSelector(`#messages li.msg.out:has-text("${toQ2}")`, { timeout: T });
  for (const text of [toQ, toQ2]) {
    const n = await page.locator(`#messages li.msg.out:has-text("${text}")`).count();
    if (n !== 1) throw new Error(`the page shows ${n} copies of ${JSON.stringify(text)}`);
  }
  await page.unroute(bundles);
  const fromQ = `q answers the browser ${env.TAG}`;
  await py({ who: "q", do: "send", to: me, text: fromQ });
  await incoming(page, fromQ);
  await page.waitForSelector(`#messages li.msg.out[data-status="delivered"]:has-text("${toQ}")`, { timeout: T });

  step("each conversation keeps its unsent text: a draft to Q waits while P's conversation is open");
  const draft = `a draft, not sent ${env.TAG}`;
  await field.fill(draft);
  await openConversation(page, env.P_USER);
  if ((await field.inputValue()) !== "") throw new Error(`P's field shows ${JSON.stringify(await field.inputValue())}, written to Q`);
  await openConversation(page, env.Q_USER);
  if ((await field.inputValue()) !== draft) throw new Error(`Q's draft is ${JSON.stringify(await field.inputValue())} after going away and back`);
  await field.fill("");

  step(`offline: the browser logs out, P writes ${BACKLOG} messages and one more, the browser logs in and gets them`);
  await page.getByRole("button", { name: "Log out" }).click();
  await page.waitForSelector("#login");
  await py({ do: "send_many", to: me, n: BACKLOG, prefix: `backlog ${env.TAG}` });
  step("P's backlog is accepted; the browser logs in");
  const offline = `written while you were away ${env.TAG}`;
  const { client_id: offlineId } = await py({ do: "send", to: me, text: offline });
  await logIn(page);
  await shot(page, "chat-login");
  const loggingIn = Date.now();
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#connection.connected", { timeout: T });
  await openConversation(page, env.P_USER);
  await incoming(page, offline);
  console.log(`the backlog of ${BACKLOG + 1} synced and shown ${Date.now() - loggingIn} ms after Log in`); // told, not timed
  await py({ do: "receipt", client_id: offlineId, status: "delivered" });
  step(`the conversation shows its newest ${SHOWN} lines, and ${SHOWN} more on "Show earlier messages"`);
  const lines = () => page.locator("#messages > li").count();
  if ((await lines()) !== SHOWN) throw new Error(`${await lines()} lines shown of a conversation of ${BACKLOG}+`);
  const last = await page.locator("#messages > li").last().innerText();
  if (!last.includes(offline)) throw new Error(`the last line is not the newest message: ${last}`);
  const inView = (text) =>
    page.evaluate((t) => {
      const list = document.querySelector("#messages");
      const line = [...list.querySelectorAll("li")].find((li) => li.textContent.includes(t));
      const [a, b] = [list.getBoundingClientRect(), line.getBoundingClientRect()];
      return b.bottom > a.top && b.top < a.bottom;
    }, text);
  if (!(await inView(offline))) throw new Error("the newest line is not in view");
  const more = page.getByRole("button", { name: /^Show earlier messages/ });
  await more.click();
  await page.waitForFunction((n) => document.querySelectorAll("#messages > li").length === n, 2 * SHOWN, { timeout: T });
  if (!(await inView(offline))) throw new Error("the earlier lines pushed the newest out of view");
  const backlogShown = await page.locator(`#messages li.msg.in:has-text("backlog ${env.TAG} ")`).count();
  if (backlogShown !== 2 * SHOWN - 1) throw new Error(`${backlogShown} backlog lines among the ${2 * SHOWN} shown`);
  const back = `back online ${env.TAG}`;
  await write(page, back);
  await py({ do: "expect", text: back });
  await page.waitForSelector(`#messages li.msg.out[data-status="delivered"]:has-text("${back}")`, { timeout: T });
  // "Play" reads a message aloud on this device (speechSynthesis): the button is there and labelled.
  await page.getByRole("button", { name: `Play message: ${offline.slice(0, 40)}` }).click();
  await shot(page, "chat-conversation");

  step("every vault write so far asked for strict durability");
  const writes = await page.evaluate(() => window.__idbWrites);
  if (writes.length < 10 || writes.some((d) => d !== "strict")) {
    throw new Error(`vault writes not strict: ${JSON.stringify([...new Set(writes)])} of ${writes.length}`);
  }

  step("a reload: the passphrase alone reopens the session (the vault holds the refresh token)");
  await page.reload();
  await page.waitForSelector("#login");
  // Meanwhile P's conversation is put back as a vault from before chunks kept it: one
  // row holding every entry. The log-in below must split it and show it all.
  const chunked = await readIndexedDb(page);
  const vault = await openVault(chunked);
  let longest = null;
  for (const r of chunked.records.filter((r) => /\/history:[0-9a-f]+$/.test(r.key))) {
    const head = await vault(r.key);
    if (longest === null || head.chunks > longest.head.chunks) longest = { key: r.key, head };
  }
  const chunkKeys = Array.from({ length: longest.head.chunks }, (_, k) => `${longest.key}:${k}`);
  const oldRow = [];
  for (const key of chunkKeys) oldRow.push(...(await vault(key)));
  if (oldRow.length <= BACKLOG) throw new Error(`P's conversation holds ${oldRow.length} entries`);
  await writeRows(page, [[longest.key, await vault.seal(longest.key, oldRow)]], chunkKeys);
  await page.getByLabel("Username", { exact: true }).fill(me);
  await page.getByLabel("Local passphrase").fill(`not ${passphrase}`);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.waitForSelector("#form-error:has-text('Wrong passphrase')", { timeout: T });
  // Keyboard only this time: Tab from the top of a fresh page, type, Enter.
  await page.reload();
  await page.waitForSelector("#login");
  await page.keyboard.press("Tab");
  if ((await page.evaluate(() => document.activeElement?.id)) !== "username") throw new Error("Tab does not reach the username first");
  await page.keyboard.type(me);
  await page.keyboard.press("Tab"); // the password: left empty
  await page.keyboard.press("Tab");
  if ((await page.evaluate(() => document.activeElement?.id)) !== "passphrase") throw new Error("Tab does not reach the passphrase");
  await page.keyboard.type(passphrase);
  await page.keyboard.press("Enter");
  await expectScreen(page, "#connection.connected");
  await openConversation(page, env.P_USER);
  await incoming(page, offline);
  const earlier = await page.getByRole("button", { name: /^Show earlier messages/ }).innerText();
  if (!earlier.includes(`(${oldRow.length - SHOWN} more)`)) throw new Error(`after the split: ${earlier}, of ${oldRow.length} entries`);
  const split = await readIndexedDb(page);
  const newHead = await (await openVault(split))(longest.key);
  if (newHead.chunks !== Math.ceil(oldRow.length / 128)) throw new Error(`split into ${JSON.stringify(newHead)}`);

  step("safety numbers match on both sides; each marks the other verified");
  await page.getByRole("button", { name: "Safety number" }).click();
  await page.waitForSelector("#safety-number:text-matches('^[0-9]{5}( [0-9]{5}){11}$')", { timeout: T });
  const webNumber = (await page.textContent("#safety-number")).trim();
  const { number: pNumber } = await py({ do: "safety", with: me });
  if (webNumber !== pNumber) throw new Error(`safety numbers differ: browser ${webNumber}, python ${pNumber}`);
  await page.getByRole("button", { name: "They match: mark as verified" }).click();
  await page.waitForSelector("#verified-state:has-text('You have verified')");
  await py({ do: "verify", with: me, number: pNumber });
  await shot(page, "chat-safety");
  await page.getByRole("button", { name: "Close" }).click();

  step("P reinstalls: the browser warns and stops sending until the new number is compared");
  await py({ do: "reinstall" });
  await page.waitForSelector("#key-warning", { timeout: T });
  await page.waitForSelector("#new-safety-number:text-matches('^[0-9]{5}( [0-9]{5}){11}$')", { timeout: T });
  if (!(await page.getByLabel(/^Message to /).isDisabled())) throw new Error("sending is not blocked after the key change");
  if (!(await page.getByRole("button", { name: "Send" }).isDisabled())) throw new Error("the send button is not disabled");
  const newNumber = (await page.textContent("#new-safety-number")).trim();
  if (newNumber === webNumber) throw new Error("the safety number did not change");
  const { number: pNew } = await py({ do: "safety", with: me });
  if (newNumber !== pNew) throw new Error(`new safety numbers differ: browser ${newNumber}, python ${pNew}`);
  await page.waitForSelector(`button.contact[data-username="${env.P_USER}"]:has-text("safety number changed")`);
  await shot(page, "chat-key-changed");
  await page.getByRole("button", { name: "I compared it: they match" }).click();
  await page.waitForSelector("#key-warning", { state: "detached" });
  const after = `to your new install ${env.TAG}`;
  await write(page, after);
  await py({ do: "expect", text: after });

  step("Q links a second device: the gateway answers devices_changed, the browser encrypts for both");
  await py({ who: "q", do: "link_second_device" });
  await openConversation(page, env.Q_USER);
  const toBoth = `to both of your devices ${env.TAG}`;
  await write(page, toBoth);
  await py({ who: "q", do: "expect", text: toBoth });
  await py({ who: "q2", do: "expect", text: toBoth });
  await page.waitForSelector(`#messages li.msg.out[data-status="delivered"]:has-text("${toBoth}")`, { timeout: T });
  if (!wsErrors.includes("devices_changed")) throw new Error(`no devices_changed was answered: ${wsErrors}`);

  step("a second tab of the same account is refused (two copies of the ratchet state would reuse keys)");
  const tab = await ctx.newPage();
  await tab.goto(`${env.LB}/`);
  await logIn(tab);
  await tab.getByRole("button", { name: "Log in" }).click();
  await tab.waitForSelector("#form-error:has-text('another tab')", { timeout: T });
  await tab.close();

  step("password reset by e-mail; log in with the new password");
  await page.getByRole("button", { name: "Log out" }).click();
  await page.getByRole("button", { name: "Forgot your password?" }).click();
  await page.getByLabel("E-mail").fill(`${me}@example.test`);
  await page.getByRole("button", { name: "E-mail me a reset code" }).click();
  await page.waitForSelector("#reset-sent");
  const { token } = await py({ do: "reset_token", email: `${me}@example.test` });
  const newPassword = `a new password ${env.TAG}`;
  await page.getByLabel("Reset code from the mail").fill(token);
  await page.getByLabel("New password", { exact: true }).fill(newPassword);
  await page.getByRole("button", { name: "Set the new password" }).click();
  await page.waitForSelector("text=Your password is changed", { timeout: T });
  await shot(page, "chat-reset");
  await page.getByRole("button", { name: "Back to log in" }).click();
  await logIn(page, newPassword);
  await page.getByRole("button", { name: "Log in" }).click();
  await expectScreen(page, "#connection.connected");

  step("two-factor: TOTP turned on; the log-in asks for a code, then takes a recovery code");
  await py({ do: "enable_totp", username: me, password: newPassword });
  await page.getByRole("button", { name: "Log out" }).click();
  await logIn(page, newPassword);
  await page.getByRole("button", { name: "Log in" }).click();
  await expectScreen(page, "#second-factor");
  await shot(page, "chat-second-factor");
  const { code: totp } = await py({ do: "totp_code" });
  await page.getByLabel("Code", { exact: true }).fill(totp);
  await page.getByLabel("Code", { exact: true }).press("Enter");
  await expectScreen(page, "#connection.connected");
  await page.getByRole("button", { name: "Log out" }).click();
  // Eight days later (the page's clock only): the log-in rotates the week-old signed
  // and last-resort prekeys and publishes them.
  const { signed_prekey_id: spkBefore } = await py({ do: "browser_signed_prekey", user: me });
  await page.clock.setFixedTime(Date.now() + 8 * 24 * 3600 * 1000);
  await logIn(page, newPassword);
  await page.getByRole("button", { name: "Log in" }).click();
  await expectScreen(page, "#second-factor");
  await page.getByLabel("Method").selectOption("recovery");
  const { code: recovery } = await py({ do: "recovery_code" });
  await page.getByLabel("Code", { exact: true }).fill(recovery);
  await page.getByRole("button", { name: "Continue" }).click();
  await expectScreen(page, "#connection.connected");
  await openConversation(page, env.P_USER);
  await incoming(page, offline); // the history is still there, in the vault
  const { signed_prekey_id: spkAfter } = await py({ do: "browser_signed_prekey", user: me });
  if (spkAfter !== spkBefore + 1) throw new Error(`signed prekey ${spkBefore} -> ${spkAfter}: not rotated after a week`);

  step("phone width");
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForFunction(() => document.documentElement.scrollWidth <= 390);
  await shot(page, "chat-phone");

  step("IndexedDB holds no plaintext");
  const dump = await readIndexedDb(page);
  const raw = JSON.stringify(dump);
  const open = await openVault(dump);
  const account = await open(`${me}/account`);
  const device = JSON.parse(Buffer.from(await open(`${me}/device`), "base64url").toString("utf8"));
  const accountKeySeed = await open(`${me}/account_key`);
  const secretsToFind = [
    ...sent, fromP, fromQ, offline,
    account.access_token, account.refresh_token,
    device.signing, device.dh, accountKeySeed,
    ...device.one_time.map(([, k]) => k),
  ];
  for (const s of secretsToFind) {
    if (!s) throw new Error("a secret to look for is empty: the vault did not hold what it should");
    const b = Buffer.from(s, /^[A-Za-z0-9_-]{43}$/.test(s) ? "base64url" : "utf8");
    for (const form of [s, b.toString("base64"), b.toString("hex")]) {
      if (raw.includes(form)) throw new Error(`IndexedDB holds a secret in the clear (${form.slice(0, 12)}…)`);
    }
  }
  // The history is in chunks: no row holds the conversation's backlog of BACKLOG messages.
  const biggest = Math.max(...dump.records.map((r) => (r.value.ct ? Buffer.from(r.value.ct.bytes, "base64").length : 0)));
  if (biggest > 160 * 1024) throw new Error(`a vault row of ${biggest} bytes: the history is not in chunks`);
  const rows = dump.records.filter((r) => /\/history:[0-9a-f]+:\d+$/.test(r.key)).length;
  if (rows < BACKLOG / 128) throw new Error(`${rows} history chunks for a conversation of ${BACKLOG}+ messages`);
  for (const r of dump.records) {
    if (r.key.endsWith("/meta")) {
      const keys = Object.keys(r.value).sort().join(",");
      if (keys !== "check,iterations,salt,v") throw new Error(`meta holds more than it should: ${keys}`);
    } else if (Object.keys(r.value).sort().join(",") !== "ct,iv") {
      throw new Error(`record ${r.key} is not sealed`);
    }
  }
  if (dump.records.some((r) => r.key.includes(env.P_USER) || r.key.includes(env.Q_USER))) throw new Error("a row name shows a contact");
  const ls = await page.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  if (ls !== "{}{}") throw new Error(`something is in web storage: ${ls}`);
  console.log(`browser user id ${account.user_id}`);
  console.log(`TEXTS ${JSON.stringify(sent)}`);

  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  step("nothing under way: the page closes without asking");
  let askedAtEnd = false;
  page.on("dialog", (d) => {
    askedAtEnd = true;
    return d.accept();
  });
  const closed = new Promise((resolve) => page.once("close", resolve));
  await page.close({ runBeforeUnload: true });
  await closed;
  if (askedAtEnd) throw new Error("the page asked before closing with nothing under way");
  await ctx.close();
  console.log("chat browser: ok");
} finally {
  await browser.close();
  replies.return?.();
  process.stdin.destroy();
}
