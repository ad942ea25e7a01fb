// Moderation in rooms from the web client: a browser user A and the Python SDK user R,
// through HAProxy. Run by tests/web/test_chat_rooms.py
// (test_browser_reports_unsends_and_edits_in_rooms), which answers the "PY {json}"
// lines. Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, invite, launch, py, sees, step, T, user, write } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** The text of a message's note, once it shows (a failure included). */
async function noteOf(line) {
  const note = line.locator(".mod-note").first();
  await note.waitFor({ timeout: T });
  return note.innerText();
}

try {
  step("A signs up; A creates a private room and invites R, who accepts (SDK)");
  const a = await user(browser, env.A_USER);
  const priv = `mod${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  await invite(a.page, priv, env.R_USER);
  await py({ do: "accept", room });

  step("R writes; A reports it from the browser, behind a confirmation (keyboard)");
  const fromR = `r says something reportable ${env.TAG}`;
  const { server_id: reportedId } = await py({ do: "send", room, text: fromR, track: false });
  await sees(a.page, fromR);
  const line = a.page.locator(`#messages li.msg.in[data-server-id="${reportedId}"]`);
  await line.getByRole("button", { name: /^Report message/ }).focus();
  await a.page.keyboard.press("Enter");
  await line.getByText("admins will see this message's text").waitFor({ timeout: T });
  await line.getByRole("button", { name: "Report to admins" }).focus();
  await a.page.keyboard.press("Enter");
  const note = await noteOf(line);
  if (note !== "Reported") throw new Error(`the report failed: ${note}`);
  // The admins' queue holds it with the verified text (python checks every field).
  await py({ do: "admin_report", room, server_id: reportedId, text: fromR, reporter: env.A_USER });

  step("A writes, R reads it; A removes it for everyone: A's page and R's client show it removed");
  const fromA = `a takes this back ${env.TAG}`;
  await write(a.page, priv, fromA);
  await py({ do: "expect", room, text: fromA });
  const own = a.page.locator(`#messages li.msg.out:has-text("${fromA}")`);
  const ownId = await own.getAttribute("data-server-id");
  if (!ownId) throw new Error("A's room message has no server id");
  await own.getByRole("button", { name: /^Remove for everyone/ }).click();
  await a.page.waitForSelector(`#messages li.msg.out.removed[data-server-id="${ownId}"], #messages li.msg.out .mod-note:has-text("Failed")`, { timeout: T });
  const failed = a.page.locator(`#messages li.msg.out .mod-note:has-text("Failed")`);
  if (await failed.count()) throw new Error(`unsend failed: ${await failed.first().innerText()}`);
  const removed = await py({ do: "expect_removed", room, server_id: ownId });
  if (removed.by !== "sender" || removed.kind !== "removed" || removed.text !== "") throw new Error(`R's client: ${JSON.stringify(removed)}`);
  if ((await a.page.locator(`#messages li:has-text("${fromA}")`).count()) !== 0) throw new Error("the removed text is still in A's page");

  step("R unsends a room message: A's page shows it removed");
  const oops = `r sent this by mistake ${env.TAG}`;
  const sentByR = await py({ do: "send", room, text: oops });
  await sees(a.page, oops);
  await py({ do: "unsend", room, client_id: sentByR.client_id });
  await expect(a.page, `#messages li.msg.in.removed[data-server-id="${sentByR.server_id}"]:has-text("Message removed by its sender")`);
  if ((await a.page.locator(`#messages li:has-text("${oops}")`).count()) !== 0) throw new Error("the unsent text is still in A's page");

  step("a public room: A posts, then edits the post (a refused edit first: the error shows)");
  const pub = `pubmod${env.TAG}`;
  const pubId = await createRoom(a.page, pub, "public");
  const post = `first version ${env.TAG}`;
  await write(a.page, pub, post);
  const postLine = a.page.locator(`#messages li.msg.out[data-seq]:has-text("${post}")`);
  await postLine.waitFor({ timeout: T });
  const seq = Number(await postLine.getAttribute("data-seq"));
  await postLine.getByRole("button", { name: /^Edit your message/ }).click();
  const field = a.page.getByLabel("Edit your message");
  await field.fill("x".repeat(4001)); // over the rooms service's 4,000 characters
  await field.press("Enter");
  const refused = await noteOf(postLine);
  if (!refused.startsWith("Failed (validation_failed): ") || !refused.includes("text")) throw new Error(`a too long edit: ${refused}`);
  const edited = `second version ${env.TAG}`;
  await field.fill(edited);
  await field.press("Enter");
  const editedLine = a.page.locator(`#messages li.msg.out[data-seq="${seq}"]`);
  await expect(a.page, `#messages li.msg.out[data-seq="${seq}"]:has-text("${edited}") .marker:has-text("edited")`);
  if ((await editedLine.innerText()).includes(post)) throw new Error("the old text is still shown");
  const stored = await py({ do: "public_post", room: pubId, seq });
  if (stored.text !== edited || stored.marker !== "edited") throw new Error(`the timeline holds ${JSON.stringify(stored)}`);
  // Only one's own posts have Edit.
  await py({ do: "join_and_post", room: pubId, text: `r posts too ${env.TAG}` });
  const rLine = a.page.locator(`#messages li.msg.in:has-text("r posts too ${env.TAG}")`);
  await rLine.waitFor({ timeout: T });
  if (await rLine.getByRole("button", { name: /^(Edit|Delete)/ }).count()) throw new Error("Edit or Delete offered on someone else's post");
  const rSeq = Number(await rLine.getAttribute("data-seq"));

  step("A deletes its own post, after a confirmation (a cancel first): removed in A's page and in the timeline R reads");
  await editedLine.getByRole("button", { name: /^Delete your message/ }).click();
  const confirm = editedLine.getByRole("group", { name: "Confirm the deletion" });
  await confirm.getByText("Delete this message for everyone").waitFor({ timeout: T });
  await confirm.getByRole("button", { name: "Cancel" }).click();
  // Keyboard only from here: the focus goes back to Delete, then to the confirming button.
  await a.page.waitForSelector(`#messages li[data-seq="${seq}"] button.delete:focus`, { timeout: T });
  await a.page.keyboard.press("Enter");
  await a.page.waitForSelector(`#messages li[data-seq="${seq}"] button.delete-yes:focus`, { timeout: T });
  await a.page.keyboard.press("Enter");
  await a.page.waitForSelector(`#messages li.msg.out.removed[data-seq="${seq}"] .marker:text-is("(deleted by its author)"), #messages li[data-seq="${seq}"] .mod-note:has-text("Failed")`, { timeout: T });
  const deleteFailed = editedLine.locator(".mod-note:has-text('Failed')");
  if (await deleteFailed.count()) throw new Error(`delete failed: ${await deleteFailed.innerText()}`);
  if ((await editedLine.innerText()).includes(edited)) throw new Error("the deleted text is still shown");
  if (await editedLine.getByRole("button").count()) throw new Error("a deleted post still offers actions");
  const gone = await py({ do: "public_post", room: pubId, seq });
  if (gone.text !== "" || gone.marker !== "deleted_by_author") throw new Error(`R reads ${JSON.stringify(gone)}`);

  step("R deletes its own post (SDK): A's page shows it removed, live (room_message_changed)");
  await py({ do: "delete_post", room: pubId, seq: rSeq });
  await expect(a.page, `#messages li.msg.in.removed[data-seq="${rSeq}"] .marker:text-is("(deleted by its author)")`);
  if ((await a.page.locator(`#messages li:has-text("r posts too ${env.TAG}")`).count()) !== 0) throw new Error("R's deleted text is still in A's page");

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat rooms moderation: ok");
} finally {
  await finish(browser);
}
