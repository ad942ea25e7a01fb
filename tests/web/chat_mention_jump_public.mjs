// A public room's mention opened from the list, its post well before the page the room
// loads: browser user A and the Python SDK user R, through HAProxy. Run by
// tests/web/test_chat_mention_jump.py, which answers the "PY {json}" lines.
// Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, launch, py, step, T, user } from "./chat_rooms_lib.mjs";
import { inView, mentionEntry } from "./chat_mention_jump_lib.mjs";

const env = process.env;
const browser = await launch();
const FILLERS = 300; // the room loads 50, the search reads 200 a page: two pages back

try {
  step("A signs up, creates a public room that R joins (SDK), then opens another room");
  const a = await user(browser, env.A_USER);
  const pub = `jump${env.TAG}`;
  const elsewhere = `away${env.TAG}`;
  const room = await createRoom(a.page, pub, "public");
  await py({ do: "join", room });
  await createRoom(a.page, elsewhere, "public");

  step(`R mentions A twice, deletes the second post, then posts ${FILLERS} more`);
  const kept = `@${env.A_USER} have a look at this ${env.TAG}`;
  const gone = `@${env.A_USER} this one is deleted ${env.TAG}`;
  const { seqs } = await py({ do: "post_many", room, texts: [kept, gone], fillers: FILLERS, tag: env.TAG });
  const [keptSeq, goneSeq] = seqs;
  await py({ do: "delete_post", room, seq: goneSeq });

  step("A clicks the deleted post's entry: the room reads back to it, scrolls to it and highlights it");
  await mentionEntry(a.page, gone).click();
  await expect(a.page, `#conversation-title:text-is("#${pub}")`);
  const goneLine = `#messages li.msg.removed.highlight[data-seq="${goneSeq}"]`;
  await expect(a.page, goneLine);
  await inView(a.page, goneLine);
  const marker = await a.page.textContent(`${goneLine} .marker`);
  if (!marker.includes("deleted by its author")) throw new Error(`the line's marker says ${marker}`);
  const lines = await a.page.locator("#messages li.msg[data-seq]").count();
  if (lines !== FILLERS + 2) throw new Error(`${lines} posts loaded, not the room's ${FILLERS + 2}`);
  if ((await a.page.locator("#messages li.msg.highlight").count()) !== 1) throw new Error("more than one line highlighted");
  await a.page.waitForSelector("#older", { state: "detached", timeout: T }); // the start was reached: nothing earlier
  const said = (await a.page.textContent("#room-status")).trim();
  if (said) throw new Error(`the status line still says: ${said}`);

  step("A opens the other room, then the first post's entry: read back and shown again");
  await a.page.locator(`#room-list button[data-room-name="${elsewhere}"]`).click();
  await expect(a.page, `#conversation-title:text-is("#${elsewhere}")`);
  await mentionEntry(a.page, kept).click();
  await expect(a.page, `#conversation-title:text-is("#${pub}")`);
  const keptLine = `#messages li.msg.highlight[data-seq="${keptSeq}"]`;
  await expect(a.page, `${keptLine}:has-text("${kept}")`);
  await inView(a.page, keptLine);
  if ((await a.page.locator("#messages li.msg.highlight").count()) !== 1) throw new Error("more than one line highlighted");

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat mention jump public: ok");
} finally {
  await finish(browser);
}
