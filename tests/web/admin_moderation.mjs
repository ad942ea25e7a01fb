// Rooms and reports in the admin console, in a real browser (Debian's Chromium,
// driven by playwright-core), through HAProxy: an admin finds a room, makes a member
// its owner (a second tab that went stale is refused), hides a message and restores
// it (never offered for a message its author deleted or one not removed), closes the
// room, removes a member, posts as the room's moderator and
// deletes another room; then works a real report: the queue,
// the verified plaintext, removes the message, resolves it with a note, and a second
// tab that went stale is shown the API's refusal. Screenshots go to SHOTS.
// Run by tests/web/test_admin_console.py (see there for the environment it passes).
import { dump, launch, shot, signIn, step, watchErrors } from "./admin_browser.mjs";

const env = process.env;
const browser = await launch();

// Waits until the table shows exactly n rows: a search's answer replaces the rows of
// the list shown before it, which may already hold the rows a step waited for.
async function count(page, selector, n, what) {
  try {
    await page.waitForFunction(([sel, want]) => document.querySelectorAll(sel).length === want,
                               [selector, n], { timeout: 15000 });
  } catch {
    const seen = await page.locator(selector).count();
    const shown = await page.locator("[role=alert]").allTextContents();
    throw new Error(`${what}: ${seen} shown, ${n} expected; the page says: ${JSON.stringify(shown)}`);
  }
}

// Waits until the member list shows `role` for that user.
async function role(page, userId, want) {
  const cell = `#member-${userId} td.role`;
  try {
    await page.waitForFunction(([sel, w]) => document.querySelector(sel)?.textContent === w, [cell, want],
                               { timeout: 15000 });
  } catch {
    const seen = await page.locator(cell).allTextContents();
    throw new Error(`role of ${userId}: ${JSON.stringify(seen)}, ${want} expected`);
  }
}

let page;
try {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  page = await ctx.newPage();
  const errors = watchErrors(page, []);
  step("admin signs in");
  await signIn(page, env.ADMIN_USER, env.ADMIN_PASSWORD, false);
  await page.click("nav >> text=Rooms");
  await page.waitForSelector("h1:has-text('Rooms')");

  step("finds the rooms by name, then the public ones");
  await page.fill("#room-search", env.TAG);
  await page.click("button:has-text('Search')");
  const plaza = page.locator(`#rooms tr[data-room-id="${env.ROOM_ID}"]`);
  await page.locator(`#rooms tr[data-room-id="${env.PRIVATE_ROOM_ID}"]`).waitFor();
  await plaza.locator(`text=${env.OWNER_NAME}`).waitFor(); // the owner by name, not by id
  await count(page, "#rooms tbody tr", 3, "rooms named with the tag");
  await shot(page, "rooms");
  await page.selectOption("#room-kind", "public");
  await page.locator(`#rooms tr[data-room-id="${env.PRIVATE_ROOM_ID}"]`).waitFor({ state: "detached" });
  await count(page, "#rooms tbody tr", 2, "public rooms named with the tag");

  step("opens the room: members and timeline");
  await plaza.locator("a").first().click();
  await page.waitForSelector(`h1:has-text("${env.ROOM_NAME}")`);
  await page.locator(`#member-${env.MEMBER_ID}`).locator(`text=${env.MEMBER_NAME}`).waitFor();
  const spam = page.locator(`#msg-${env.SPAM_SEQ}`);
  await spam.locator(`text=${env.SPAM_TEXT}`).waitFor();

  step("the owner is the owner: no one offers to make them it again");
  await page.locator(`#member-${env.HEIR_ID}`).locator(`text=${env.HEIR_NAME}`).waitFor();
  await page.locator(`#room-owner >> text=${env.OWNER_NAME}`).waitFor();
  await role(page, env.OWNER_ID, "owner");
  await role(page, env.HEIR_ID, "member");
  await page.waitForSelector(`#owner-${env.HEIR_ID}`);
  await page.waitForSelector(`#owner-${env.MEMBER_ID}`);
  if (await page.locator(`#owner-${env.OWNER_ID}`).count()) throw new Error("the owner is offered to be made owner");

  step("a second tab opens the room (it will go stale)");
  const [staleRoom] = await Promise.all([
    ctx.waitForEvent("page"),
    page.evaluate(() => void window.open(window.location.href, "_blank")),
  ]);
  // Its refused hand-over is an error answer this script expects.
  watchErrors(staleRoom, errors, (r) => r.status() === 409 && new URL(r.url()).pathname.endsWith("/owner"));
  await staleRoom.waitForSelector(`#owner-${env.HEIR_ID}`);

  step("makes a member the owner, with a reason, after a confirmation");
  await page.fill("#room-reason", env.OWNER_REASON);
  await page.click(`#owner-${env.HEIR_ID}`);
  const question = await page.locator(`#member-${env.HEIR_ID} .confirm`).textContent();
  if (!question.includes("current owner becomes a moderator") || !question.includes("members are told")) {
    throw new Error(`the confirmation says: ${JSON.stringify(question)}`);
  }
  await page.click(`#owner-${env.HEIR_ID}-yes`);
  await page.waitForSelector("[role=status] >> text=Owner changed.");
  await page.locator(`#room-owner >> text=${env.HEIR_NAME}`).waitFor();
  await role(page, env.HEIR_ID, "owner");
  await role(page, env.OWNER_ID, "moderator");
  // The former owner may be made owner again; the new one is not offered it.
  await page.waitForSelector(`#owner-${env.OWNER_ID}`);
  if (await page.locator(`#owner-${env.HEIR_ID}`).count()) throw new Error("the new owner is offered to be made owner");
  if (await page.locator("[role=alert]").count()) throw new Error(`error shown: ${await page.textContent("[role=alert]")}`);

  step("the stale tab makes the same member the owner and is shown why it cannot");
  await staleRoom.click(`#owner-${env.HEIR_ID}`);
  await staleRoom.click(`#owner-${env.HEIR_ID}-yes`);
  const conflict = staleRoom.locator(".error[data-code=conflict]");
  await conflict.waitFor();
  if (!(await conflict.textContent()).includes("owned by that member already")) {
    throw new Error(`refusal shown: ${await conflict.textContent()}`);
  }
  if (await staleRoom.locator("[role=status]").count()) throw new Error("the stale tab reports a change");
  await staleRoom.close();

  step("no restore for a message its author deleted, nor for one never removed");
  await page.locator(`#msg-${env.DELETED_SEQ}[data-marker="deleted_by_author"] .moderate`).click();
  // The panel's sentence, not the history's badge below it ("deleted by its author"), loaded at its own pace.
  await page.locator(".panel").getByText("Deleted by its author: that is final").waitFor();
  if (await page.locator("#restore, #hide").count()) throw new Error("a message its author deleted offers restore or hide");
  await spam.locator(".moderate").click(); // opens its panel in place of the other's
  await page.waitForSelector("#hide");
  if (await page.locator("#restore").count()) throw new Error("a message never removed offers restore");

  step("hides a message, with a reason");
  await page.fill("#msg-reason", env.HIDE_REASON);
  await page.click("#hide");
  await page.click("#hide-yes");
  await page.waitForSelector(`#msg-${env.SPAM_SEQ}[data-marker="removed_by_moderator"]`);
  // The history keeps the original and says why it changed.
  await page.locator(".revisions").locator(`text=${env.SPAM_TEXT}`).waitFor();
  await page.locator(".revisions").locator(`text=${env.HIDE_REASON}`).waitFor();
  if ((await spam.locator("td.text").textContent()).includes(env.SPAM_TEXT)) {
    throw new Error("the hidden message's text is still shown on the timeline");
  }

  step("restores it, with a reason, after a confirmation");
  await page.waitForSelector("#restore");
  if (await page.inputValue("#msg-reason")) throw new Error("the hide's reason is offered for the restore");
  if (await page.locator("#hide").count()) throw new Error("a hidden message offers hide");
  await page.fill("#msg-reason", env.RESTORE_REASON);
  await page.click("#restore");
  const asked = await page.locator(".panel .confirm").textContent();
  if (!asked.includes("as it was before its removal")) throw new Error(`the confirmation says: ${JSON.stringify(asked)}`);
  await page.click("#restore-yes");
  await page.waitForSelector("[role=status] >> text=Restored.");
  await page.waitForSelector(`#msg-${env.SPAM_SEQ}[data-marker=""]`);
  await spam.locator("td.text").locator(`text=${env.SPAM_TEXT}`).waitFor();
  // The history: the original, the removal with its reason, then the restore with its.
  await count(page, ".revisions tbody tr", 3, "revisions after the restore");
  const revs = (await page.locator(".revisions tbody tr").allTextContents()).map((t) => t.replace(/\s+/g, " "));
  const has = (i, ...parts) => parts.every((p) => revs[i].includes(p));
  if (!has(0, env.SPAM_TEXT) || revs[0].includes("restored") || !has(1, "removed by a moderator", env.HIDE_REASON)
      || !has(2, env.SPAM_TEXT, "restored", env.RESTORE_REASON)) {
    throw new Error(`history after the restore: ${JSON.stringify(revs)}`);
  }
  await page.waitForSelector("#hide");
  if (await page.locator("#restore").count()) throw new Error("a restored message offers restore");
  if (await page.locator("[role=alert]").count()) throw new Error(`error shown: ${await page.textContent("[role=alert]")}`);

  step("closes the room, with a reason for the audit log");
  await page.fill("#room-reason", "raid, closed for the night (browser test)");
  await page.click("#close");
  await page.waitForSelector("#room-state >> text=closed");
  await page.waitForSelector("#reopen");

  step("removes a member, after a confirmation");
  await page.click(`#remove-${env.MEMBER_ID}`);
  await page.waitForSelector(`#remove-${env.MEMBER_ID}-yes`);
  await page.click(`#remove-${env.MEMBER_ID}-yes`);
  await page.waitForSelector(`#member-${env.MEMBER_ID}`, { state: "detached" });
  await page.waitForSelector("[role=status] >> text=Member removed.");
  await page.waitForSelector("h2:has-text('Members (2)')");

  step("posts as the room's moderator (a closed room takes it)");
  await page.fill("#post-text", env.NOTICE);
  await page.click("button:has-text('Post')");
  await page.locator("#timeline tbody tr").first().locator(`text=${env.NOTICE}`).waitFor();
  await page.locator("#timeline tbody tr").first().locator(".badge:has-text('moderator')").waitFor();
  await shot(page, "room", true);

  step("deletes another room, after a confirmation");
  await page.click("text=← Rooms");
  await page.fill("#room-search", env.TAG);
  await page.click("button:has-text('Search')");
  // The search's answer, not the unfiltered list shown before it (which holds the
  // room too: a click there can land on a row the answer then replaces).
  await count(page, "#rooms tbody tr", 3, "rooms named with the tag");
  await page.locator(`#rooms tr[data-room-id="${env.DOOMED_ROOM_ID}"] a`).first().click();
  await page.click("#delete");
  await page.waitForSelector("#delete-yes");
  await page.click("#delete-yes");
  await page.waitForSelector("#room-state >> text=deleted");
  await page.waitForSelector("[role=status] >> text=Deleted.");
  if (await page.locator("#close, #reopen, #delete").count()) throw new Error("a deleted room still offers actions");

  step("the report queue shows the report, with names and the plaintext");
  await page.click("nav >> text=Reports");
  const row = page.locator(`#reports tr[data-report-id="${env.REPORT_ID}"]`);
  await row.waitFor();
  await row.locator(`text=${env.REPORT_TEXT}`).waitFor();
  await row.locator(`text=${env.SENDER_NAME}`).waitFor();
  await row.locator(`text=${env.REPORTER_NAME}`).waitFor();
  await shot(page, "reports");

  step("opens the report");
  await row.locator("a").first().click();
  await page.waitForSelector("#report-text");
  const shown = (await page.textContent("#report-text")).trim();
  if (shown !== env.REPORT_TEXT) throw new Error(`report text: ${JSON.stringify(shown)}`);
  await page.waitForSelector("#state:has-text('open')");
  await shot(page, "report", true);

  step("a second tab opens the same report (it will go stale)");
  const [stale] = await Promise.all([
    ctx.waitForEvent("page"),
    page.evaluate(() => void window.open(window.location.href, "_blank")),
  ]);
  // Its refused resolution is the one error answer this script expects.
  watchErrors(stale, errors, (r) => r.status() === 409 && r.url().endsWith("/resolve"));
  await stale.waitForSelector("#dismissed");

  step("removes the reported message, after a confirmation");
  await page.fill("#remove-reason", env.REMOVE_REASON);
  await page.click("#remove-message");
  await page.click("#remove-message-yes");
  await page.waitForSelector("[role=status] >> text=Message removed: a signed tombstone went to");
  await page.waitForSelector(`#removed >> text=${env.REMOVE_REASON}`);
  // By the admin's name: the delivery service records its actor by id only.
  await page.locator("#removed").locator(`a:text-is("${env.ADMIN_USER}")`).waitFor();

  step("resolves the report as actioned, with a note");
  await page.fill("#note", env.NOTE);
  await page.click("#actioned");
  await page.waitForSelector("#state:has-text('actioned')");
  await page.locator("#resolution").locator(`text=${env.NOTE}`).waitFor();
  await page.locator("#resolution").locator(`text=${env.ADMIN_USER}`).waitFor();

  step("the stale tab tries to dismiss it and is shown why it cannot");
  await stale.fill("#note", "not so bad");
  await stale.click("#dismissed");
  const refusal = stale.locator(".error[data-code=report_resolved]");
  await refusal.waitFor();
  if (!(await refusal.textContent()).includes("resolved already")) {
    throw new Error(`refusal shown: ${await refusal.textContent()}`);
  }
  await stale.close();

  if (errors.length) throw new Error(`console errors: ${errors.join("; ")}`);
  await ctx.close();
  console.log("admin moderation: ok");
} catch (e) {
  if (page) await dump(page);
  throw e;
} finally {
  await browser.close();
}
