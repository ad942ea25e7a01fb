// Restoring a public post a moderator removed, from the web client: the browser user A
// (the room's owner) and the Python SDK user R, through HAProxy. Run by
// tests/web/test_chat_rooms.py (test_browser_restores_removed_posts), which answers the
// "PY {json}" lines (and plays an admin for the refusal). Env: LB, WEB_DIR, A_USER,
// R_USER, TAG.
import { createRoom, expect, finish, launch, py, sees, step, T, user } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** A's line of post `seq`, in a state `selector` says (`.removed`, `:not(.removed)`...),
 * or a failure shown by it: the failure is thrown. */
async function awaitLine(page, seq, selector) {
  const line = `#messages li.msg[data-seq="${seq}"]`;
  await page.waitForSelector(`${line}${selector}, ${line} .mod-note:has-text("Failed")`, { timeout: T });
  const failed = page.locator(`${line} .mod-note:has-text("Failed")`);
  if (await failed.count()) throw new Error(`post ${seq}: ${await failed.first().innerText()}`);
}

try {
  step("A signs up and creates a public room (its owner); R joins and posts");
  const a = await user(browser, env.A_USER);
  const name = `restore${env.TAG}`;
  const room = await createRoom(a.page, name, "public");
  await py({ do: "join", room });
  const first = `r says this, removed then restored ${env.TAG}`;
  const { seq } = await py({ do: "post", room, text: first });
  await sees(a.page, first);
  const line = a.page.locator(`#messages li.msg.in[data-seq="${seq}"]`);
  if (await line.getByRole("button", { name: /^Restore/ }).count()) throw new Error("Restore offered on a post that was not removed");

  step("A removes R's post (Remove, confirmed): A's page shows it removed; R's SDK gets room_message_changed with the marker");
  await line.getByRole("button", { name: /^Remove .*'s message: / }).click();
  await line.getByRole("group", { name: "Confirm the removal" }).getByRole("button", { name: "Remove for everyone" }).click();
  await awaitLine(a.page, seq, `.removed .marker:text-is("(removed by a moderator)")`);
  if ((await line.innerText()).includes(first)) throw new Error("the removed text is still in A's page");
  const removal = await py({ do: "expect_changed", room, seq });
  if (removal.marker !== "removed_by_moderator" || removal.text !== "") throw new Error(`R's SDK got ${JSON.stringify(removal)}`);

  step("A restores it: Restore, Cancel (the focus goes back), then keyboard only: Restore and Restore for everyone");
  const restore = line.getByRole("button", { name: /^Restore .*'s message of .*, removed by a moderator$/ });
  await restore.click();
  const confirm = line.getByRole("group", { name: "Confirm the restore" });
  await confirm.getByText("Restore this message for everyone in the room?").waitFor({ timeout: T });
  await confirm.getByRole("button", { name: "Cancel" }).click();
  await a.page.waitForSelector(`#messages li[data-seq="${seq}"] button.restore-post:focus`, { timeout: T });
  await a.page.keyboard.press("Enter");
  await a.page.waitForSelector(`#messages li[data-seq="${seq}"] button.restore-post-yes:focus`, { timeout: T });
  await a.page.keyboard.press("Enter");
  await awaitLine(a.page, seq, `:not(.removed):has-text("${first}")`);
  if (await line.locator(".marker").count()) throw new Error(`a restored post still marked: ${await line.locator(".marker").innerText()}`);
  if (await line.getByRole("button", { name: /^Restore/ }).count()) throw new Error("Restore still offered on the restored post");
  if (!(await line.getByRole("button", { name: /^Remove .*'s message: / }).count())) throw new Error("no Remove on the restored post");
  await expect(a.page, `#room-status:has-text("message of"):has-text("is restored.")`);

  step("R's SDK gets room_message_changed with no marker and the text back; the timeline R reads holds it");
  const back = await py({ do: "expect_changed", room, seq });
  if (back.marker !== null || back.text !== first) throw new Error(`R's SDK got ${JSON.stringify(back)}`);
  const stored = await py({ do: "public_post", room, seq });
  if (stored.marker !== null || stored.text !== first) throw new Error(`the timeline holds ${JSON.stringify(stored)}`);

  step("R deletes its own post (SDK): A's page shows it deleted, with no Restore (an author's deletion is final)");
  const second = `r deletes this one ${env.TAG}`;
  const { seq: deletedSeq } = await py({ do: "post", room, text: second });
  await sees(a.page, second);
  await py({ do: "delete_post", room, seq: deletedSeq });
  await expect(a.page, `#messages li.msg.in.removed[data-seq="${deletedSeq}"] .marker:text-is("(deleted by its author)")`);
  const deleted = a.page.locator(`#messages li.msg.in[data-seq="${deletedSeq}"]`);
  if (await deleted.getByRole("button").count()) throw new Error(`a post deleted by its author offers: ${await deleted.innerText()}`);

  step("an admin hides R's third post: A's page offers Restore; the server refuses it (forbidden), shown in an alert by the post");
  const third = `an admin hides this ${env.TAG}`;
  const { seq: hiddenSeq } = await py({ do: "post", room, text: third });
  await sees(a.page, third);
  await py({ do: "admin_hide", room, seq: hiddenSeq });
  await expect(a.page, `#messages li.msg.in.removed[data-seq="${hiddenSeq}"] .marker:text-is("(removed by a moderator)")`);
  const hidden = a.page.locator(`#messages li.msg.in[data-seq="${hiddenSeq}"]`);
  await hidden.getByRole("button", { name: /^Restore / }).click();
  await hidden.getByRole("group", { name: "Confirm the restore" }).getByRole("button", { name: "Restore for everyone" }).click();
  const alert = hidden.getByRole("alert");
  await alert.waitFor({ timeout: T });
  const refused = await alert.innerText();
  if (!refused.startsWith("Failed (forbidden): ") || !refused.includes("admin")) throw new Error(`the refused restore says: ${refused}`);
  if (!(await hidden.evaluate((li) => li.classList.contains("removed")))) throw new Error("the refused restore changed the line");

  step("the admin restores it: A's page shows the text again, live (room_message_changed, marker null), the refusal gone");
  await py({ do: "admin_restore", room, seq: hiddenSeq });
  await expect(a.page, `#messages li.msg.in:not(.removed)[data-seq="${hiddenSeq}"]:has-text("${third}")`);
  if (await hidden.locator(".marker").count()) throw new Error("the post the admin restored is still marked");
  if (await hidden.getByRole("alert").count()) throw new Error("the refusal still shows on a restored post");
  const live = await py({ do: "expect_changed", room, seq: hiddenSeq, marker: null });
  if (live.text !== third) throw new Error(`R's SDK got ${JSON.stringify(live)}`);

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat rooms restore: ok");
} finally {
  await finish(browser);
}
