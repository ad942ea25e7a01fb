/**
 * Sending at the rate the server takes (client/parley/messenger.py `_Pacer`,
 * `_SEND_AGAIN`): the gateway counts each user's `send` and `room_send` frames in a
 * token bucket it advertises in `ready.limits` (`sends_per_s`, `send_burst`), answers
 * `rate_limited` past it, and closes a socket that collects min(4 × burst, 400) of
 * those refusals (4009, docs/protocol.md). A backlog larger than the burst (the outbox
 * after a reconnect, a room's key distribution) sent in one go collected them all.
 */

/** Refusals after which a queued message stays in the outbox and goes again later
 * (nothing was stored: docs/protocol.md, "Errors"): the first wait and its cap, in ms;
 * each further refusal of the same message doubles the wait. */
export const SEND_AGAIN: Record<string, readonly [number, number]> = {
  rate_limited: [0, 0], // at once, at the paced rate (the bucket was emptied: Pacer.drain)
  service_unavailable: [1000, 30_000],
  inbox_full: [5000, 300_000],
  too_many_pending: [5000, 300_000],
};

/** How long to wait before sending a message again after its `tries`-th refusal with
 * `code` (one of SEND_AGAIN). */
export function sendAgainIn(code: string, tries: number): number {
  const [first, cap] = (Object.hasOwn(SEND_AGAIN, code) ? SEND_AGAIN[code] : undefined) ?? [1000, 30_000];
  return Math.min(cap, first * 2 ** Math.max(0, tries - 1));
}

/** Close codes after which reconnecting at once would meet the same answer: the
 * reconnect backoff keeps growing (4009 flooding, 4010 too many sockets). */
export const THROTTLED_CLOSES: ReadonlySet<number> = new Set([4009, 4010]);

/**
 * The client's copy of the gateway's send bucket: every `send` and `room_send` waits
 * for a token, so a backlog goes out at the rate the server takes instead of
 * collecting `rate_limited` refusals. Before the first `ready` it allows a large burst
 * (the server's answers, if any, then empty it: {@link drain}).
 */
export class Pacer {
  #rate = 50; // tokens a second
  #burst = 5000;
  #tokens = 5000;
  #at: number;
  readonly #waits = new Set<() => void>(); // the takes waiting for their token

  constructor(readonly clock: () => number = () => performance.now()) {
    this.#at = clock();
  }

  /** A new socket's `ready` and its limits (none: the ones known). The tokens above the
   * new burst are gone, and so is any debt: the waits booked for sends on a socket that
   * closed (those sends go nowhere, the new socket's flush sends them) do not hold up
   * the new socket's sends. No fresh burst either: the server's bucket is shared by the
   * user's sockets on the pod, and may be empty (messenger.py `_Pacer.configure`). */
  configure(sendsPerS = this.#rate, burst = this.#burst): void {
    this.#refill();
    this.#rate = Math.max(sendsPerS, 0.001);
    this.#burst = Math.max(burst, 1);
    this.#tokens = Math.max(0, Math.min(this.#tokens, this.#burst));
    // The waits booked before end now: their sends were for the socket that closed
    // (the caller checks that its socket is still the one before it sends), and a loop
    // awaiting one (an old flush, a round of held resends) ends now, not at its time.
    for (const release of [...this.#waits]) release();
  }

  /** The server refused a send (`rate_limited`): its bucket, shared by all of the
   * user's sockets on the pod, is empty whatever ours says. */
  drain(): void {
    this.#refill();
    this.#tokens = Math.min(this.#tokens, 0);
  }

  /** Wait for a token. It is taken at once (the count may go below zero), so those
   * who call meanwhile wait behind it, in the order they called; until the next
   * {@link configure} (a new socket), which ends every wait booked before it. */
  take(): Promise<void> {
    this.#refill();
    this.#tokens -= 1;
    if (this.#tokens >= 0) return Promise.resolve();
    // Rounded up: a timer that fires a fraction of a millisecond early would send
    // before the server's bucket has the token.
    const ms = Math.ceil((-this.#tokens / this.#rate) * 1000);
    return new Promise((resolve) => {
      const release = () => {
        clearTimeout(timer);
        this.#waits.delete(release);
        resolve();
      };
      const timer = setTimeout(release, ms);
      this.#waits.add(release);
    });
  }

  #refill(): void {
    const now = this.clock();
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#at) / 1000) * this.#rate);
    this.#at = now;
  }
}
