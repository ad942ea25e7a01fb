// Typing in rooms from the web client: browser user A and the Python SDK user R,
// through HAProxy. Run by tests/web/test_chat_rooms.py (test_browser_typing_in_rooms),
// which answers the "PY {json}" lines. Env: LB, WEB_DIR, A_USER, R_USER, TAG.
import { createRoom, expect, finish, invite, launch, py, sees, step, T, user } from "./chat_rooms_lib.mjs";

const env = process.env;
const browser = await launch();

/** The typing line once it names `name`: it must then say exactly `text`. */
async function typingLine(page, name, text) {
  try {
    await page.waitForFunction((n) => document.querySelector("#typing")?.textContent.includes(n), name, { timeout: T });
  } catch {
    throw new Error(`the typing line never names ${name}: ${JSON.stringify(await page.textContent("#typing"))}`);
  }
  const said = await page.textContent("#typing");
  if (said !== text) throw new Error(`the typing line says ${JSON.stringify(said)}, not ${JSON.stringify(text)}`);
}

try {
  step("A signs up; A creates a private room and invites R, who accepts (SDK)");
  const a = await user(browser, env.A_USER);
  const priv = `typ${env.TAG}`;
  const room = await createRoom(a.page, priv, "private");
  await invite(a.page, priv, env.R_USER);
  await py({ do: "accept", room });
  const live = await a.page.getAttribute("#typing", "aria-live");
  if (live !== "polite") throw new Error(`the typing line is not a polite live region (aria-live=${live})`);

  step("A types in the composer without sending: R's client gets typing from A's user");
  const field = a.page.getByLabel(`Message to #${priv}`);
  await field.pressSequentially("hel");
  await py({ do: "expect_typing", room, user: env.A_USER, typing: true });

  step("R says it types (SDK): A's page shows R alone (A's own notice, which came first, is not shown)");
  await py({ do: "typing", room });
  await typingLine(a.page, env.R_USER, `${env.R_USER} is typing…`);

  step("A clears the draft: R gets the stop; R's message clears R from A's page");
  await field.fill("");
  await py({ do: "expect_typing", room, user: env.A_USER, typing: false });
  const fromR = `r was typing this ${env.TAG}`;
  await py({ do: "send", room, text: fromR });
  await sees(a.page, fromR);
  const after = await a.page.textContent("#typing"); // the same render as the message (6 s before it would expire)
  if (after !== "") throw new Error(`R's message did not clear the typing line: ${JSON.stringify(after)}`);

  step("a public room: R joins; A types (R gets typing), then sends (R gets the stop)");
  const pub = `typpub${env.TAG}`;
  const pubId = await createRoom(a.page, pub, "public");
  await py({ do: "join", room: pubId });
  await a.page.getByLabel(`Message to #${pub}`).pressSequentially("hello all");
  await py({ do: "expect_typing", room: pubId, user: env.A_USER, typing: true });
  await a.page.getByLabel(`Message to #${pub}`).press("Enter");
  await expect(a.page, `#messages li.msg.out:has-text("hello all")`);
  await py({ do: "expect_typing", room: pubId, user: env.A_USER, typing: false });

  step('"Let members see when I type" off: A types and sends, R gets the post and no typing');
  const setting = a.page.getByLabel("Let members see when I type");
  if (!(await setting.isChecked())) throw new Error("typing notices are not on by default");
  await setting.uncheck();
  await a.page.waitForFunction(() => !document.querySelector("#tell-typing")?.checked, null, { timeout: T });
  const quiet = `typed quietly ${env.TAG}`;
  await a.page.getByLabel(`Message to #${pub}`).pressSequentially(quiet);
  await a.page.getByLabel(`Message to #${pub}`).press("Enter");
  await expect(a.page, `#messages li.msg.out:has-text("${quiet}")`);
  await py({ do: "expect_no_typing", room: pubId, text: quiet });

  if (a.errors.length) throw new Error(`console errors: ${a.errors.join("; ")}`);
  step("done");
  console.log("chat rooms typing: ok");
} finally {
  await finish(browser);
}
