// Roles and the room's state from the web client: two browser users, A (the owner) and
// B, and the Python SDK user R, through HAProxy. Run by tests/web/test_chat_rooms_roles.py,
// which answers the "PY {json}" lines (see its story). Env: LB, WEB_DIR, A_USER, B_USER,
// R_USER, TAG.
import path from "node:path";
import { createRoom, expect, finish, invite, launch, py, sees, step, T, user as signUp, write } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();
const user = (name) => signUp(browser, name);
/** A screenshot into SHOTS, when the test asks for them. */
const shot = (page, name) => env.SHOTS && page.screenshot({ path: path.join(env.SHOTS, `${name}.png`) });

/** A member's row in the open members list. */
const row = (page, name) => page.locator(`#member-list li.member[data-username="${name}"]`);

/** Open the members list (if it is not) and wait until it shows `want` ({name: role}),
 * exactly those members. */
async function members(page, want) {
  const toggle = page.locator("#members-toggle");
  if ((await toggle.getAttribute("aria-expanded")) !== "true") await toggle.click();
  try {
    await page.waitForFunction(
      (w) => {
        const items = [...document.querySelectorAll("#member-list li.member")];
        return items.length === Object.keys(w).length && items.every((li) => w[li.dataset.username ?? ""] === li.dataset.role);
      },
      want,
      { timeout: T },
    );
  } catch {
    const shown = await page.$$eval("#member-list li.member", (items) => items.map((li) => [li.dataset.username, li.dataset.role]));
    throw new Error(`the member list never shows ${JSON.stringify(want)}: it shows ${JSON.stringify(shown)}`);
  }
}

/** The names of the action buttons in a member's row. */
const buttonsOf = (page, name) => row(page, name).locator(".member-actions button").allInnerTexts();

/** Fail unless the page's status line for member actions says `text`. */
async function said(page, text) {
  await page.locator(`#members-status:text-is("${text}")`).waitFor({ timeout: T });
}

/** The `send` frames (pairwise: a sender key's distribution) a page sent to `userId`
 * among `frames`. */
const sendsTo = (frames, userId) => frames.map((f) => JSON.parse(f)).filter((f) => f.op === "send" && f.to === userId).length;
const roomSends = (frames) => frames.map((f) => JSON.parse(f)).filter((f) => f.op === "room_send").length;

try {
  step("A and B sign up; A creates a private room and invites B and R; R accepts (SDK), B in the page");
  const [a, b] = await Promise.all([user(env.A_USER), user(env.B_USER)]);
  const priv = `roles${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  for (const who of [env.B_USER, env.R_USER]) await invite(a.page, priv, who);
  await py({ do: "accept", room });
  await b.page.getByRole("button", { name: "Refresh rooms" }).click();
  await b.page.getByRole("button", { name: `Accept the invitation to #${priv}` }).click();
  await expect(b.page, `#conversation-title:text-is("#${priv}")`);

  step("A and B write once each: everyone has everyone's sender key");
  const fromA = `a opens the room ${env.TAG}`;
  await write(a.page, priv, fromA);
  await sees(b.page, fromA);
  await py({ do: "expect", room, text: fromA });
  const fromB = `b answers ${env.TAG}`;
  await write(b.page, priv, fromB);
  await sees(a.page, fromB);
  await py({ do: "expect", room, text: fromB });

  step("B, a plain member, sees the members and their roles, and no button to manage them or the room, nor the bans");
  await members(b.page, { [env.A_USER]: "owner", [env.B_USER]: "member", [env.R_USER]: "member" });
  if ((await b.page.locator("#member-list .member-actions button").count()) !== 0) throw new Error("a plain member is offered member actions");
  if (await b.page.locator("#close-room").count()) throw new Error("a plain member is offered Close room");
  if (await b.page.locator("#bans").count()) throw new Error("a plain member is shown the room's bans");

  step("A, the owner: buttons on B and R, none on A, and no one banned; A makes B a moderator");
  await members(a.page, { [env.A_USER]: "owner", [env.B_USER]: "member", [env.R_USER]: "member" });
  const offered = await buttonsOf(a.page, env.B_USER);
  if (JSON.stringify(offered) !== JSON.stringify(["Make moderator", "Make owner", "Remove", "Ban"])) throw new Error(`the owner is offered ${offered} on B`);
  await a.page.locator("#bans #bans-empty").waitFor({ timeout: T });
  if ((await row(a.page, env.A_USER).locator("button").count()) !== 0) throw new Error("the owner is offered actions on themself");
  const aId = await row(a.page, env.A_USER).getAttribute("data-user-id");
  const bId = await row(a.page, env.B_USER).getAttribute("data-user-id");
  const rId = await row(a.page, env.R_USER).getAttribute("data-user-id");
  await a.page.getByRole("button", { name: `Make ${env.B_USER} a moderator` }).click();
  await said(a.page, `${env.B_USER} is now a moderator of #${priv}.`);
  await members(a.page, { [env.A_USER]: "owner", [env.B_USER]: "moderator", [env.R_USER]: "member" });
  if (JSON.stringify(await buttonsOf(a.page, env.B_USER)) !== JSON.stringify(["Remove as moderator", "Make owner", "Remove", "Ban"])) throw new Error("the owner's buttons on a moderator");

  step("B refreshes: B is a moderator, may close the room, remove and ban R, not A, and sees the bans");
  await b.page.getByRole("button", { name: "Refresh members" }).click();
  await members(b.page, { [env.A_USER]: "owner", [env.B_USER]: "moderator", [env.R_USER]: "member" });
  await b.page.locator("#close-room").waitFor({ timeout: T });
  if (JSON.stringify(await buttonsOf(b.page, env.R_USER)) !== JSON.stringify(["Remove", "Ban"])) throw new Error(`a moderator is offered ${await buttonsOf(b.page, env.R_USER)} on R`);
  await b.page.locator("#bans #bans-empty").waitFor({ timeout: T });
  if ((await row(b.page, env.A_USER).locator("button").count()) !== 0) throw new Error("a moderator is offered actions on the owner");

  step("B opens the removal of R; A makes B a plain member meanwhile: B's page is told at once (room_changed role) and offers nothing any more");
  await b.page.getByRole("button", { name: `Remove ${env.R_USER} from #${priv}` }).click();
  const confirmB = row(b.page, env.R_USER).getByRole("group", { name: `Confirm removing ${env.R_USER}` });
  await confirmB.getByText("each member's next message goes out under a new key").waitFor({ timeout: T });
  await a.page.getByRole("button", { name: `Remove ${env.B_USER} as moderator` }).click();
  await said(a.page, `${env.B_USER} is no longer a moderator of #${priv}.`);
  await members(b.page, { [env.A_USER]: "owner", [env.B_USER]: "member", [env.R_USER]: "member" });
  await b.page.waitForFunction(
    (name) => ![...document.querySelectorAll("#member-list li.member")].some((li) => li.dataset.username === name && li.querySelector("button")),
    env.R_USER, { timeout: T },
  );
  if ((await b.page.locator("#close-room").count()) !== 0) throw new Error("a plain member is still offered to close the room");
  await b.page.locator("#bans").waitFor({ state: "detached", timeout: T });
  await shot(b.page, "chat-room-demoted");

  step("A removes R (after a confirmation): R is gone from A's list, and R can no longer send");
  await a.page.getByRole("button", { name: `Remove ${env.R_USER} from #${priv}` }).click();
  const confirmA = row(a.page, env.R_USER).getByRole("group", { name: `Confirm removing ${env.R_USER}` });
  await confirmA.getByRole("button", { name: "Remove" }).waitFor({ timeout: T });
  await shot(a.page, "chat-room-members");
  await confirmA.getByRole("button", { name: "Remove" }).click();
  await said(a.page, `${env.R_USER} was removed from #${priv}.`);
  await members(a.page, { [env.A_USER]: "owner", [env.B_USER]: "member" });
  await py({ do: "send_refused", room, text: `r tries after removal ${env.TAG}` });

  step("A writes: its sender key is rotated first (a new chain to B, nothing to R); B reads it");
  let before = a.framesSent.length;
  const afterRemoval = `a after r was removed ${env.TAG}`;
  await write(a.page, priv, afterRemoval);
  await sees(b.page, afterRemoval);
  let frames = a.framesSent.slice(before);
  if (sendsTo(frames, bId) !== 1 || sendsTo(frames, rId) !== 0 || roomSends(frames) !== 1) {
    throw new Error(`A's frames after the removal: ${sendsTo(frames, bId)} to B, ${sendsTo(frames, rId)} to R, ${roomSends(frames)} room_send`);
  }

  step("B, told of nothing, writes: it finds R gone at its send and rotates too; A reads it");
  before = b.framesSent.length;
  const fromBAfter = `b after r was removed ${env.TAG}`;
  await write(b.page, priv, fromBAfter);
  await sees(a.page, fromBAfter);
  frames = b.framesSent.slice(before);
  if (sendsTo(frames, aId) !== 1 || sendsTo(frames, rId) !== 0) {
    throw new Error("B did not rotate its sender key after R's removal");
  }

  step("A closes the room: both pages show it closed, B's composer is disabled with the reason");
  await a.page.locator("#close-room").click();
  await a.page.getByRole("group", { name: `Confirm closing #${priv}` }).getByRole("button", { name: "Close room" }).click();
  for (const page of [a.page, b.page]) {
    await page.locator("#room-closed-badge").waitFor({ timeout: T });
    await page.locator("#composer-blocked:has-text('This room is closed')").waitFor({ timeout: T });
    if (!(await page.locator("#message").isDisabled()) || !(await page.locator("#send").isDisabled())) throw new Error("the composer of a closed room is enabled");
    if ((await page.locator("#message").getAttribute("aria-describedby")) !== "composer-blocked") throw new Error("the disabled composer does not say why");
  }
  await a.page.locator("#reopen-room").waitFor({ timeout: T });
  await shot(b.page, "chat-room-closed");
  await a.page.locator(`button.room[data-room-name="${priv}"]:has-text("closed")`).waitFor({ timeout: T });

  step("A reopens it: B's composer comes back at once; B writes and A reads it");
  await a.page.locator("#reopen-room").click();
  await b.page.locator("#message:not([disabled])").waitFor({ timeout: T });
  if (await b.page.locator("#room-closed-badge, #composer-blocked").count()) throw new Error("B's page still shows the room closed");
  const reopened = `b writes after the reopening ${env.TAG}`;
  await write(b.page, priv, reopened);
  await sees(a.page, reopened);

  step("a public room; A's \"Ban a user\" refuses an unknown name and A's own, showing the code, and lists nobody");
  const pub = `rolespub${env.TAG}`;
  const pubId = await createRoom(a.page, pub, "public");
  await members(a.page, { [env.A_USER]: "owner" });
  await a.page.locator("#bans #bans-empty").waitFor({ timeout: T });
  const banForm = a.page.locator("#bans #ban-form");
  const banField = banForm.getByLabel("User to ban (username or user id)");
  const banReads = await a.page.locator("#bans").getAttribute("data-reads");
  for (const [name, code] of [[`nobody${env.TAG}`, "user_not_found"], [env.A_USER, "cannot_target_self"]]) {
    await banField.fill(name);
    await banField.press("Enter");
    const alert = banForm.locator(`[role=alert]:has-text("Failed (${code})")`);
    try {
      await alert.waitFor({ timeout: T });
    } catch {
      throw new Error(`banning ${name} shows ${JSON.stringify(await banForm.innerText())}`);
    }
    if ((await banField.getAttribute("aria-invalid")) !== "true" || (await banField.inputValue()) !== name) throw new Error(`the field after banning ${name} is not kept and marked`);
    if (await banForm.getByRole("group").count()) throw new Error(`banning ${name} asked for a confirmation`);
  }
  await shot(a.page, "chat-room-ban-refused");
  if ((await a.page.locator("#ban-list li").count()) || !(await a.page.locator("#bans #bans-empty").count())) throw new Error("a refused ban listed someone");
  if ((await a.page.locator("#bans").getAttribute("data-reads")) !== banReads) throw new Error("a refused ban read the bans again");

  step("A bans B, who never joined, by username: asked first (not a member), then listed; B's join from the directory is refused with banned; A lifts it");
  await banField.fill(env.B_USER);
  await banForm.getByRole("button", { name: "Ban", exact: true }).click();
  const confirmByName = banForm.getByRole("group", { name: `Confirm banning ${env.B_USER}` });
  await confirmByName.getByText("They are not a member").waitFor({ timeout: T });
  if (await banForm.getByRole("alert").count()) throw new Error("the form still shows the last refusal");
  const yesByName = confirmByName.getByRole("button", { name: "Ban", exact: true });
  if (!(await yesByName.evaluate((el) => el === document.activeElement))) throw new Error("the confirmation does not take the focus");
  await shot(a.page, "chat-room-ban-by-name");
  await yesByName.click();
  await said(a.page, `${env.B_USER} was banned from #${pub}.`);
  const bannedByName = a.page.locator(`#ban-list li.ban[data-username="${env.B_USER}"]`);
  await bannedByName.waitFor({ timeout: T });
  if ((await a.page.locator("#ban-list li.ban").count()) !== 1 || (await bannedByName.getAttribute("data-user-id")) !== bId) throw new Error(`Banned users lists ${await a.page.locator("#ban-list li.ban").allInnerTexts()}`);
  if ((await banField.inputValue()) !== "" || !(await banField.evaluate((el) => el === document.activeElement))) throw new Error("the field is not emptied and focused after the ban");
  await shot(a.page, "chat-room-banned-by-name");
  await b.page.getByLabel("Find public rooms").fill(pub);
  await b.page.getByRole("button", { name: "Search" }).click();
  await b.page.getByRole("button", { name: `Join #${pub}` }).click();
  await b.page.locator("#rooms-error").waitFor({ timeout: T });
  const refusedByName = await b.page.locator("#rooms-error").innerText();
  if (!/\bbanned\b/.test(refusedByName)) throw new Error(`the refused join says ${JSON.stringify(refusedByName)}`);
  await bannedByName.getByRole("button", { name: `Lift the ban on ${env.B_USER}` }).click();
  await a.page.locator("#bans #bans-empty").waitFor({ timeout: T });
  await a.page.locator("#members-toggle").click(); // closed: read afresh when opened below

  step("B joins the public room from the directory and posts; A (owner) removes B's post; both pages show it removed");
  await b.page.getByLabel("Find public rooms").fill(pub);
  await b.page.getByRole("button", { name: "Search" }).click();
  await b.page.getByRole("button", { name: `Join #${pub}` }).click();
  await expect(b.page, `#conversation-title:text-is("#${pub}")`);
  const post = `b posts in public ${env.TAG}`;
  await write(b.page, pub, post);
  const aLine = a.page.locator(`#messages li.msg.in:has-text("${post}")`);
  await aLine.waitFor({ timeout: T });
  const seq = Number(await aLine.getAttribute("data-seq"));
  const bLine = b.page.locator(`#messages li.msg.out[data-seq="${seq}"]`);
  if (await bLine.locator("button.remove-post").count()) throw new Error("B is offered a moderator's Remove on its own post");
  await aLine.getByRole("button", { name: `Remove ${env.B_USER}'s message: ${post}` }).click();
  await aLine.getByRole("group", { name: "Confirm the removal" }).getByRole("button", { name: "Remove for everyone" }).click();
  await expect(a.page, `#messages li.msg.in.removed[data-seq="${seq}"] .marker:text-is("(removed by a moderator)")`);
  await expect(b.page, `#messages li.msg.out.removed[data-seq="${seq}"] .marker:text-is("(removed by a moderator)")`);
  for (const line of [aLine, bLine]) if ((await line.count()) && (await line.innerText()).includes(post)) throw new Error("the removed text is still shown");
  await shot(a.page, "chat-room-post-removed");
  const stored = await py({ do: "public_post", room: pubId, seq });
  if (stored.text !== "" || stored.marker !== "removed_by_moderator") throw new Error(`the timeline holds ${JSON.stringify(stored)}`);

  step("A bans B from the public room (after a confirmation): B leaves A's member list and is listed under Banned users; B's page says B is no member");
  await members(a.page, { [env.A_USER]: "owner", [env.B_USER]: "member" });
  await a.page.getByRole("button", { name: `Ban ${env.B_USER} from #${pub}` }).click();
  const confirmBan = row(a.page, env.B_USER).getByRole("group", { name: `Confirm banning ${env.B_USER}` });
  await confirmBan.getByText("until the ban is lifted").waitFor({ timeout: T });
  await confirmBan.getByRole("button", { name: "Ban", exact: true }).click();
  await said(a.page, `${env.B_USER} was banned from #${pub}.`);
  await members(a.page, { [env.A_USER]: "owner" });
  const banned = a.page.locator(`#ban-list li.ban[data-username="${env.B_USER}"]`);
  await banned.waitFor({ timeout: T });
  if ((await a.page.locator("#ban-list li.ban").count()) !== 1) throw new Error(`Banned users lists ${await a.page.locator("#ban-list li.ban").allInnerTexts()}`);
  if ((await banned.getAttribute("data-user-id")) !== bId || (await banned.locator(".member-name").innerText()) !== env.B_USER) throw new Error("the ban is not shown by B's name");
  if (!(await banned.locator(".ban-by").innerText()).includes("banned by you")) throw new Error("the ban does not say who banned");
  await shot(a.page, "chat-room-banned");
  await b.page.locator("#composer-blocked:text-is('You are not a member of this room.')").waitFor({ timeout: T });

  step("B joins the public room again from the directory: refused, the page shows the server's banned message");
  await b.page.getByRole("button", { name: "Refresh rooms" }).click();
  await b.page.getByRole("button", { name: "Search" }).click();
  await b.page.getByRole("button", { name: `Join #${pub}` }).click();
  await b.page.locator("#rooms-error").waitFor({ timeout: T });
  const refusal = await b.page.locator("#rooms-error").innerText();
  if (!/\bbanned\b/.test(refusal)) throw new Error(`the refused join says ${JSON.stringify(refusal)}`);

  step("A lifts the ban: Banned users is empty; B joins from the directory and is a member again");
  await banned.getByRole("button", { name: `Lift the ban on ${env.B_USER}` }).click();
  await said(a.page, `The ban on ${env.B_USER} was lifted: they may join #${pub} again.`);
  await a.page.locator("#bans #bans-empty").waitFor({ timeout: T });
  if (await a.page.locator("#ban-list li").count()) throw new Error("Banned users still lists someone after the lift");
  await b.page.getByRole("button", { name: `Join #${pub}` }).click();
  await expect(b.page, "#room-kind-note:has-text('You are its member.')");
  await b.page.locator("#message:not([disabled])").waitFor({ timeout: T });
  await a.page.getByRole("button", { name: "Refresh members" }).click();

  step("A hands the public room over to B (after a confirmation): A is a moderator, B the owner");
  await members(a.page, { [env.A_USER]: "owner", [env.B_USER]: "member" });
  await a.page.getByRole("button", { name: `Make ${env.B_USER} the owner of #${pub}` }).click();
  await row(a.page, env.B_USER).getByRole("group", { name: `Confirm handing the room over to ${env.B_USER}` }).getByRole("button", { name: "Hand over" }).click();
  await said(a.page, `${env.B_USER} is now the owner of #${pub}; you are a moderator.`);
  await members(a.page, { [env.A_USER]: "moderator", [env.B_USER]: "owner" });
  await a.page.locator("#room-kind-note:has-text('You are its moderator.')").waitFor({ timeout: T });
  if ((await a.page.locator("#member-list .member-actions button").count()) !== 0) throw new Error("the old owner, now a moderator, is offered actions on the owner");

  const errors = [...a.errors, ...b.errors];
  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  step("done");
  console.log("chat rooms roles: ok");
} finally {
  await finish(browser);
}
