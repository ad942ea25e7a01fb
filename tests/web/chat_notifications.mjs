// Mention notifications in the web client: browser user A and the Python SDK user R,
// through HAProxy. Run by tests/web/test_chat_notifications.py, which answers the
// "PY {json}" lines. Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, launch, py, step, T, user } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** Wait until the badge says `n` (0: no badge at all). */
async function badge(page, n) {
  try {
    await page.waitForFunction(
      (want) => (document.querySelector("#notifications-badge")?.textContent ?? "0") === String(want),
      n,
      { timeout: T },
    );
  } catch {
    const said = await page.$eval("#notifications-badge", (b) => b.textContent).catch(() => "no badge");
    throw new Error(`the unread badge never says ${n}: it says ${said}`);
  }
}

try {
  step("A signs up, creates a public room that R joins (SDK), then opens another room");
  const a = await user(browser, env.A_USER);
  const pub = `men${env.TAG}`;
  const room = await createRoom(a.page, pub, "public");
  await py({ do: "join", room });
  await createRoom(a.page, `elsewhere${env.TAG}`, "public");
  await badge(a.page, 0);

  step("R mentions A: the badge says 1 and the entry is in the list, live");
  const first = `hello @${env.A_USER}, look at this ${env.TAG}`;
  const { seq } = await py({ do: "mention", room, text: first });
  await badge(a.page, 1);
  await a.page.getByRole("button", { name: /^Mentions/ }).click();
  const entry = a.page.locator("#notification-list li.notice.unread").filter({ hasText: first });
  await entry.filter({ hasText: `${env.R_USER} mentioned you in #${pub}` }).waitFor({ timeout: T });

  step("clicking it opens that room with the message highlighted; it is read (page and server)");
  await entry.getByRole("button").click();
  await expect(a.page, `#conversation-title:text-is("#${pub}")`);
  await expect(a.page, `#messages li.msg.highlight[data-seq="${seq}"]:has-text("${first}")`);
  await badge(a.page, 0);
  const afterOpen = await py({ do: "unread" });
  if (afterOpen.unread !== 0) throw new Error(`the server still counts ${afterOpen.unread} unread after opening`);

  step('two more mentions: the badge says 2; "Mark all read" clears it, and the server agrees');
  await py({ do: "mention", room, text: `@${env.A_USER} one ${env.TAG}` });
  await py({ do: "mention", room, text: `@${env.A_USER} two ${env.TAG}` });
  await badge(a.page, 2);
  await a.page.locator("#notification-list li.notice.unread").nth(1).waitFor({ timeout: T });
  await a.page.getByRole("button", { name: "Mark all read" }).click();
  await badge(a.page, 0);
  const afterAll = await py({ do: "unread" });
  if (afterAll.unread !== 0) throw new Error(`the server still counts ${afterAll.unread} unread after "Mark all read"`);
  if ((await a.page.locator("#notification-list li.notice.unread").count()) !== 0) throw new Error("entries still shown unread");

  step("the mention e-mail setting: on by default (the server's), off is saved on the server");
  const mails = a.page.getByLabel("E-mail me when I am mentioned while I am away");
  await a.page.waitForSelector("#mention-emails:not([disabled])", { timeout: T });
  if (!(await mails.isChecked())) throw new Error("mention e-mails are not on by default");
  await mails.uncheck();
  await a.page.waitForSelector("#mention-emails:not([disabled]):not(:checked)", { timeout: T });
  const prefs = await py({ do: "preferences" });
  if (prefs.mention_emails !== false) throw new Error(`the server says mention_emails=${prefs.mention_emails}`);

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat notifications: ok");
} finally {
  await finish(browser);
}
