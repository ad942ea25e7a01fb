// What chat_mention_jump_public.mjs and chat_mention_jump_private.mjs share (with
// chat_rooms_lib.mjs): the Mentions list's entries and "scrolled into view".
import { T } from "./chat_rooms_lib.mjs";

/** The Mentions list's entry holding `text` (the list opened if it is closed), once it
 * is there. */
export function mentionEntry(page, text) {
  const entry = page.locator("#notification-list li.notice").filter({ hasText: text }).getByRole("button");
  return {
    async click() {
      if ((await page.getAttribute("#notifications-toggle", "aria-expanded")) !== "true") {
        await page.getByRole("button", { name: /^Mentions/ }).click();
      }
      await entry.waitFor({ timeout: T });
      await entry.click();
    },
  };
}

/** Wait until the element `selector` is wholly inside the visible part of the message
 * list and of the window. */
export async function inView(page, selector) {
  try {
    await page.waitForFunction(
      (sel) => {
        const line = document.querySelector(sel);
        const list = document.querySelector("#messages");
        if (!line || !list) return false;
        const r = line.getBoundingClientRect();
        const l = list.getBoundingClientRect();
        return r.height > 0 && r.top >= l.top - 1 && r.bottom <= l.bottom + 1 && r.top >= 0 && r.bottom <= window.innerHeight;
      },
      selector,
      { timeout: T },
    );
  } catch {
    const where = await page.evaluate((sel) => {
      const line = document.querySelector(sel)?.getBoundingClientRect();
      const list = document.querySelector("#messages")?.getBoundingClientRect();
      return JSON.stringify({ line: line && [line.top, line.bottom], list: list && [list.top, list.bottom], window: window.innerHeight });
    }, selector);
    throw new Error(`${selector} is not scrolled into view: ${where}`);
  }
}
