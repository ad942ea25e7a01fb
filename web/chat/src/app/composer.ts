/** What the message composers (a conversation's, a room's) share: each conversation's
 * unsent text while another one is open, what a send that failed leaves for the user,
 * and the browser's question before a page is left with messages that are not safe yet. */

import { StillQueued } from './client.ts';

/** Each conversation's unsent text, kept while the page lives (in memory only: never
 * written anywhere, gone at log-out or a reload). Keys: a contact's user id, or
 * `room:<room id>`. */
export class Drafts {
  readonly #texts = new Map<string, string>();

  get(key: string): string {
    return this.#texts.get(key) ?? '';
  }

  set(key: string, text: string): void {
    if (text) this.#texts.set(key, text);
    else this.#texts.delete(key);
  }

  /** A refused send's text back into its conversation's draft, unless the user wrote
   * another one there meanwhile (that one is kept). */
  restore(key: string, text: string): void {
    if (!this.get(key)) this.set(key, text);
  }
}

/** What became of a send that did not end as asked: `unsent`, refused before it was
 * queued (nothing went: its text goes back into the draft, to send again), or `queued`
 * (StillQueued: encrypted in the outbox, it goes by itself with the same id; its text
 * stays out of the draft, as sending it again would deliver it twice). */
export function failedSend(error: unknown): 'queued' | 'unsent' {
  return error instanceof StillQueued ? 'queued' : 'unsent';
}

let underway = 0;
const ask = (e: BeforeUnloadEvent) => {
  e.preventDefault();
  e.returnValue = ''; // older browsers need a value to ask
};

/** Hold the page while `send` runs: until it settles, leaving the page (closing the tab,
 * a reload, another address) makes the browser ask first. A message is safe once the
 * client has it encrypted in the vault's outbox (sent again at the next connect) or the
 * server has accepted it; until then its text exists only in the page. */
export function holding<T>(send: Promise<T>): Promise<T> {
  if (underway++ === 0) addEventListener('beforeunload', ask);
  const done = () => {
    if (--underway === 0) removeEventListener('beforeunload', ask);
  };
  send.then(done, done);
  return send;
}
