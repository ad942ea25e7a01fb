// Rooms in the web client: two browser users (A, B: two contexts of Debian's Chromium,
// driven by playwright-core) and the Python SDK user R, through HAProxy. Run by
// tests/web/test_chat_rooms.py, which answers the "PY {json}" lines (see its story).
// Env: LB, WEB_DIR, SHOTS, A_USER, B_USER, R_USER, TAG.
import path from "node:path";
import { createRoom, expect, finish, invite, launch, logIn, logOut, py, sees, step, T, user as signUp, write as writeLine } from "./chat_rooms_lib.mjs";

const env = process.env;
const sent = []; // the private room's texts the browsers wrote
const browser = await launch();
const user = (name) => signUp(browser, name);
async function write(page, room, text, priv = true) {
  if (priv) sent.push(text);
  await writeLine(page, room, text);
}

try {
  step("A and B sign up in their own browser contexts");
  const [a, b] = await Promise.all([user(env.A_USER), user(env.B_USER)]);

  step("A creates a private room and invites B and R by username");
  const priv = `priv${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  for (const who of [env.B_USER, env.R_USER]) await invite(a.page, priv, who);
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
  // The pairwise sessions behind the sender keys make no conversations: nobody wrote
  // 1:1, so neither page lists the others as contacts.
  for (const [page, others] of [[a.page, [env.B_USER, env.R_USER]], [b.page, [env.A_USER, env.R_USER]]]) {
    for (const name of others) {
      if (await page.locator(`button.contact[data-username="${name}"]`).count()) throw new Error(`a room member, ${name}, is listed as a conversation`);
    }
  }
  await a.page.screenshot({ path: path.join(env.SHOTS, "chat-room.png") });

  step("B is away while A and R write; back, B reads them from the room's log, each once");
  // What B's page asks of the room's log (its `after`: the cursor it reads from), alone
  // or with its other rooms (on connect: POST /delivery/v1/rooms/logs).
  const logReads = [];
  b.page.on("request", (req) => {
    const url = new URL(req.url());
    if (url.pathname === `/delivery/v1/rooms/${room}/log`) logReads.push(Number(url.searchParams.get("after")));
    if (url.pathname === "/delivery/v1/rooms/logs") {
      for (const ask of JSON.parse(req.postData() ?? "{}").rooms ?? []) {
        if (ask.room === room) logReads.push(Number(ask.after ?? 0));
      }
    }
  });
  await logOut(b.page);
  const away = [`while b was away, from a ${env.TAG}`, `a second one while b was away ${env.TAG}`];
  for (const text of away) {
    await write(a.page, priv, text);
    await expect(a.page, `#messages li.msg.out[data-status="accepted"]:has-text("${text}")`); // in the room's log
  }
  const awayR = `r writes while b is away ${env.TAG}`;
  await py({ do: "send", room, text: awayR });
  logReads.length = 0;
  await logIn(b.page, env.B_USER);
  await b.page.locator(`button.room[data-room-name="${priv}"]`).click();
  await expect(b.page, `#conversation-title:text-is("#${priv}")`);
  const missed = [...away, awayR];
  const once = async (page, texts) => {
    for (const text of texts) {
      await expect(page, `#messages li.msg:has-text("${text}")`);
      const n = await page.locator(`#messages li.msg:has-text("${text}")`).count();
      if (n !== 1) throw new Error(`"${text}" shows ${n} times`);
    }
  };
  await once(b.page, [fromA, fromB, fromR, ...missed]);
  // Nothing pushed while B was away: only the log holds them. B's cursor was 3 (three
  // messages read live), the log holds six now.
  if (logReads[0] !== 3) throw new Error(`B read the room's log after ${JSON.stringify(logReads)}, not after 3`);
  step("B reloads: the cursor in the vault reads the log from 6, nothing shows twice");
  logReads.length = 0;
  await b.page.reload();
  await b.page.waitForSelector("#login");
  await b.page.getByLabel("Username", { exact: true }).fill(env.B_USER);
  await b.page.getByLabel("Local passphrase").fill(`local passphrase ${env.TAG}`);
  await b.page.getByRole("button", { name: "Log in" }).click();
  await expect(b.page, "#connection.connected");
  await b.page.locator(`button.room[data-room-name="${priv}"]`).click();
  await once(b.page, [fromA, fromB, fromR, ...missed]);
  for (let i = 0; i < 50 && logReads.length === 0; i++) await b.page.waitForTimeout(100);
  if (JSON.stringify(logReads) !== "[6]") throw new Error(`after the reload B read the room's log after ${JSON.stringify(logReads)}, not 6`);

  step("R's message that waited for its key shows in its place, before B's answer written meanwhile");
  // R sends under a new chain it gives nobody yet (A's and B's pages keep it sealed); B
  // answers meanwhile: the log numbers B's answer after R's, and B's page places it there
  // once it sees its own message's number (data-seq); then R gives the key.
  const held = `r's message before its key ${env.TAG}`;
  await py({ do: "send_before_key", room, text: held });
  const answer = `b answers meanwhile ${env.TAG}`;
  await write(b.page, priv, answer);
  await expect(b.page, `#messages li.msg.out[data-seq]:has-text("${answer}")`);
  await py({ do: "give_key", room });
  for (const [who, page] of [["A", a.page], ["B", b.page]]) {
    await sees(page, held);
    const lines = await page.$$eval("#messages li.msg", (els) => els.map((el) => el.textContent ?? ""));
    const at = [held, answer].map((text) => lines.findIndex((line) => line.includes(text)));
    if (!(at[0] >= 0 && at[0] < at[1])) throw new Error(`${who}'s page is not in the room's order: ${JSON.stringify(lines.slice(-3))}`);
  }

  step("R links a second device: A's next message reaches it at once");
  // A's page names the member devices its key went to (device_digest). If it read R's
  // devices less than 30 s ago it does not know the new one: the gateway refuses the
  // message (devices_changed), A gives the new device the key, encrypts the text again
  // and resends it with the same id. Either way the new device reads it, once.
  const seen = a.framesSent.length;
  await py({ do: "link" });
  const forNew = `for r's new device ${env.TAG}`;
  await write(a.page, priv, forNew);
  await py({ do: "expect_on_new", room, text: forNew });
  await sees(b.page, forNew);
  const roomSends = a.framesSent.slice(seen).filter((p) => p.startsWith("{")).map((p) => JSON.parse(p)).filter((f) => f.op === "room_send" && f.room === room);
  if (roomSends.length === 0 || roomSends.some((f) => typeof f.device_digest !== "string")) throw new Error(`A's room_send frames: ${JSON.stringify(roomSends)}`);
  const tries = roomSends.filter((f) => f.id === roomSends.at(-1).id);
  if (tries.length > 1 && new Set(tries.map((f) => f.body)).size !== tries.length) throw new Error("a resend after devices_changed was not encrypted again");
  console.log(`room_send tries for the message after the link: ${tries.length}`);

  step("B leaves: A's next message rotates A's sender key and reaches R");
  await b.page.getByRole("button", { name: "Leave room" }).click();
  await b.page.waitForSelector(`button.room[data-room-name="${priv}"]`, { state: "detached", timeout: T });
  const { chains: before } = await py({ do: "chains", room, user: env.A_USER });
  const afterLeave = `after b left ${env.TAG}`;
  await write(a.page, priv, afterLeave);
  await py({ do: "expect", room, text: afterLeave });
  const { chains: after } = await py({ do: "chains", room, user: env.A_USER });
  if (after !== before + 1) throw new Error(`A's sender key was not rotated after B left: R holds ${before} then ${after} chains`);

  step("A writes two messages back to back: the field empties at once, both go, in order");
  const quick = [`quick one ${env.TAG}`, `quick two ${env.TAG}`];
  const field = a.page.getByLabel(`Message to #${priv}`);
  for (const text of quick) {
    sent.push(text);
    await field.fill(text);
    await field.press("Enter");
    if ((await field.inputValue()) !== "") throw new Error(`the field still holds ${JSON.stringify(text)} after Enter`);
  }
  for (const text of quick) await expect(a.page, `#messages li.msg.out[data-status="accepted"]:has-text("${text}")`);
  for (const text of quick) await py({ do: "expect", room, text }); // R reads the second after the first
  const order = await a.page.$$eval("#messages li.msg.out", (els) => els.map((el) => el.textContent ?? ""));
  const at = quick.map((text) => order.findIndex((line) => line.includes(text)));
  if (!(at[0] >= 0 && at[0] < at[1])) throw new Error(`A's page shows them out of order: ${JSON.stringify(order)}`);

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
  if ((await focused()) !== "members-toggle") throw new Error(`the second Tab reaches ${await focused()}`);
  await b.page.keyboard.press("Tab");
  if ((await focused()) !== "invitee") throw new Error(`the third Tab reaches ${await focused()}`);
  await expect(b.page, "#room-kind-note:has-text('Public room')");
  const post = `a public post ${env.TAG}`;
  // A's page reads the timeline's newest page after each post. Slowed down here (as on a
  // loaded server), that read must not hold up the next post: it is written the moment
  // the first shows (its live frame), and must go too.
  let slowTimeline = true;
  await a.page.route("**/messages?limit=20", async (route) => {
    if (slowTimeline) await new Promise((resolve) => setTimeout(resolve, 1500));
    await route.continue();
  });
  await write(a.page, pub, post, false);
  await write(a.page, pub, `${post}, and another`, false);
  slowTimeline = false;
  await sees(b.page, post);
  await sees(b.page, `${post}, and another`);
  await b.page.screenshot({ path: path.join(env.SHOTS, "chat-room-public.png") });

  step("each room keeps its unsent text: A's draft in the public room waits while the private one is open");
  const draft = `a draft, not sent ${env.TAG}`;
  await a.page.getByLabel(`Message to #${pub}`).fill(draft);
  await a.page.locator(`button.room[data-room-name="${priv}"]`).click();
  await expect(a.page, `#conversation-title:text-is("#${priv}")`);
  const privField = await a.page.getByLabel(`Message to #${priv}`).inputValue();
  if (privField !== "") throw new Error(`#${priv}'s field shows ${JSON.stringify(privField)}, written in #${pub}`);
  await a.page.locator(`button.room[data-room-name="${pub}"]`).click();
  await expect(a.page, `#conversation-title:text-is("#${pub}")`);
  const pubField = await a.page.getByLabel(`Message to #${pub}`).inputValue();
  if (pubField !== draft) throw new Error(`#${pub}'s draft is ${JSON.stringify(pubField)} after going away and back`);
  await a.page.getByLabel(`Message to #${pub}`).fill("");

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
  await finish(browser);
}
