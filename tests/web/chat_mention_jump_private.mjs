// A private room's mention opened from the list: the message it names (`server_id`) is
// found in the browser's own history, scrolled into view and highlighted. Browser user
// A and the Python SDK user R, through HAProxy. Run by tests/web/test_chat_mention_jump.py,
// which answers the "PY {json}" lines. Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, invite, launch, py, sees, step, user } from "./chat_rooms_lib.mjs";
import { inView, mentionEntry } from "./chat_mention_jump_lib.mjs";

const env = process.env;
const browser = await launch();
const LATER = 25; // lines after the mention: the room opens scrolled to the newest, the mention far above

try {
  step("A signs up, creates a private room and invites R, who accepts (SDK)");
  const a = await user(browser, env.A_USER);
  const priv = `pjump${env.TAG}`;
  const elsewhere = `paway${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  await invite(a.page, priv, env.R_USER);
  await py({ do: "accept", room });

  step(`R mentions A there while A is connected, then writes ${LATER} more lines`);
  const mention = `@${env.A_USER} the encrypted one ${env.TAG}`;
  const { server_id: serverId } = await py({ do: "send", room, text: mention });
  const later = Array.from({ length: LATER }, (_, n) => `later line ${n} ${env.TAG}`);
  await py({ do: "send_many", room, texts: later });
  await sees(a.page, mention);
  await sees(a.page, later[LATER - 1]); // every line is in A's history

  step("from another room, A clicks the entry: the private room opens at that message, highlighted");
  await createRoom(a.page, elsewhere, "public");
  await mentionEntry(a.page, `${env.R_USER} mentioned you in #${priv}`).click();
  await expect(a.page, `#conversation-title:text-is("#${priv}")`);
  const line = `#messages li.msg.highlight[data-server-id="${serverId}"]`;
  await expect(a.page, `${line}:has-text("${mention}")`);
  await inView(a.page, line);
  if ((await a.page.locator("#messages li.msg.highlight").count()) !== 1) throw new Error("more than one line highlighted");
  const said = (await a.page.textContent("#room-status")).trim();
  if (said) throw new Error(`the status line says: ${said}`);

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat mention jump private: ok");
} finally {
  await finish(browser);
}
