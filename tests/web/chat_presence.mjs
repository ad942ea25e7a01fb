// Presence in a room's member list from the web client: browser user A, the Python SDK
// user R (connected) and S (signed up over HTTP, never connected), through HAProxy.
// Run by tests/web/test_chat_presence.py, which answers the "PY {json}" lines.
// Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, invite, launch, py, step, T, user } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** What the member list shows now, by name: role, online, and the visible text. */
const shown = (page) =>
  page.$$eval("#member-list li.member", (items) =>
    items.map((li) => ({ name: li.dataset.username, role: li.dataset.role, online: li.dataset.online, text: li.textContent })),
  );

/** Wait until the member list shows exactly `want` ({name: [role, online]}): the names
 * resolved, each role and presence said in the row's text ("online" only when online,
 * by the dot). */
async function members(page, want) {
  try {
    await page.waitForFunction(
      (w) => {
        const items = [...document.querySelectorAll("#member-list li.member")];
        if (items.length !== Object.keys(w).length) return false;
        return items.every((li) => {
          const expected = w[li.dataset.username ?? ""];
          if (!expected) return false;
          const [role, online] = expected;
          const dot = li.querySelector(".presence .dot[aria-hidden=true]");
          const says = li.querySelector(".presence")?.textContent.includes("online") ?? false;
          return (
            li.dataset.role === role &&
            li.querySelector(".role")?.textContent.includes(role) &&
            li.dataset.online === String(online) &&
            says === online &&
            Boolean(dot) === online
          );
        });
      },
      want,
      { timeout: T },
    );
  } catch {
    throw new Error(`the member list never shows ${JSON.stringify(want)}: it shows ${JSON.stringify(await shown(page))}`);
  }
  const error = await page.$(".error[role=alert]");
  if (error) throw new Error(`the page says: ${await error.textContent()}`);
}

/** The number of member-list reads the page has shown. */
const readsShown = async (page) => Number(await page.getAttribute("#member-list", "data-reads"));

/** Wait until the page shows a read of the member list newer than the `after`th. */
async function freshRead(page, after, why) {
  try {
    await page.waitForFunction((n) => Number(document.querySelector("#member-list")?.dataset.reads ?? 0) > n, after, { timeout: T });
  } catch {
    throw new Error(`no new read of the member list ${why} (still read ${await readsShown(page)} times)`);
  }
}

try {
  step("A signs up, creates a public room; R (connected SDK) joins; S (never connected) joins and A makes S a moderator");
  const a = await user(browser, env.A_USER);
  const lookups = [];
  const reads = [];
  a.page.on("request", (r) => {
    const url = new URL(r.url());
    if (url.pathname.startsWith("/auth/v1/users/")) lookups.push(url.pathname);
    if (/^\/rooms\/v1\/rooms\/[^/]+\/members$/.test(url.pathname)) reads.push(url.search);
  });
  const pub = `pres${env.TAG}`;
  const room = await createRoom(a.page, pub, "public");
  await py({ do: "join", room });
  const { username: s } = await py({ do: "offline_member", room });

  step("A opens Members: A (owner) and R online, S (moderator) offline, by name; one read of one page");
  const toggle = a.page.getByRole("button", { name: /^Members/ });
  if ((await toggle.getAttribute("aria-expanded")) !== "false") throw new Error("the member list is open before it is asked for");
  const namesBefore = lookups.length;
  await toggle.click();
  await expect(a.page, '#members-toggle[aria-expanded="true"]');
  await members(a.page, { [env.A_USER]: ["owner", true], [env.R_USER]: ["member", true], [s]: ["moderator", false] });
  await expect(a.page, '#members-summary:text-is("3 members, 2 online.")');
  const mine = await a.page.textContent(`#member-list li[data-username="${env.A_USER}"] .member-name`);
  if (mine !== `${env.A_USER} (you)`) throw new Error(`A's own row says ${JSON.stringify(mine)}`);
  if (reads.length !== 1) throw new Error(`${reads.length} reads of the member list on opening it: ${reads.join(", ")}`);
  // The server names the members (S is nobody A knows): no name asked of it one by one.
  if (lookups.length !== namesBefore) throw new Error(`names asked for the list: ${lookups.slice(namesBefore).join(", ")}`);
  const asked = lookups.length;

  step("R hides its presence (PATCH preferences): after 'Refresh members' R shows offline; no name asked again");
  await py({ do: "show_presence", on: false });
  let before = await readsShown(a.page);
  await a.page.getByRole("button", { name: "Refresh members" }).click();
  await freshRead(a.page, before, "after 'Refresh members'");
  await members(a.page, { [env.A_USER]: ["owner", true], [env.R_USER]: ["member", false], [s]: ["moderator", false] });
  await expect(a.page, '#members-summary:text-is("3 members, 1 online.")');
  if (reads.length !== 2) throw new Error(`${reads.length} reads of the member list after one refresh`);
  if (lookups.length !== asked) throw new Error(`names asked again on a refresh: ${lookups.slice(asked).join(", ")}`);

  step("R shows it again; A changes the topic (HTTP): room_changed refreshes the open list by itself");
  await py({ do: "show_presence", on: true });
  before = await readsShown(a.page);
  await py({ do: "topic", room, topic: `presence ${env.TAG}` });
  await freshRead(a.page, before, "after room_changed");
  await members(a.page, { [env.A_USER]: ["owner", true], [env.R_USER]: ["member", true], [s]: ["moderator", false] });

  step("A's 'Show when I'm online': on by default (the server's); off is saved on the server, and A shows offline");
  const presence = a.page.getByLabel("Show when I'm online");
  await a.page.waitForSelector("#show-presence:not([disabled])", { timeout: T });
  if (!(await presence.isChecked())) throw new Error("'Show when I'm online' is not on by default");
  if (!(await a.page.getByLabel("E-mail me when I am mentioned while I am away").isChecked())) throw new Error("mention e-mails are not on");
  await presence.uncheck();
  await a.page.waitForSelector("#show-presence:not([disabled]):not(:checked)", { timeout: T });
  const prefs = await py({ do: "preferences" });
  if (prefs.show_presence !== false) throw new Error(`the server says show_presence=${prefs.show_presence}`);
  if (prefs.mention_emails !== true) throw new Error(`the server says mention_emails=${prefs.mention_emails}`);
  before = await readsShown(a.page);
  await a.page.getByRole("button", { name: "Refresh members" }).click();
  await freshRead(a.page, before, "after 'Refresh members'");
  await members(a.page, { [env.A_USER]: ["owner", false], [env.R_USER]: ["member", true], [s]: ["moderator", false] });
  const seen = await py({ do: "online", room });
  if (seen[env.A_USER] !== false || seen[env.R_USER] !== true) throw new Error(`R's SDK reads ${JSON.stringify(seen)}`);

  step("a private room R accepted: its list starts closed, and shows R online, A (hidden) offline");
  const priv = `prv${env.TAG}`;
  const secret = await createRoom(a.page, priv, "private");
  await invite(a.page, priv, env.R_USER);
  await py({ do: "accept", room: secret });
  await expect(a.page, '#members-toggle[aria-expanded="false"]');
  if (await a.page.$("#member-list")) throw new Error("the previous room's member list is still shown");
  await toggle.click();
  await members(a.page, { [env.A_USER]: ["owner", false], [env.R_USER]: ["member", true] });

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat presence: ok");
} finally {
  await finish(browser);
}
