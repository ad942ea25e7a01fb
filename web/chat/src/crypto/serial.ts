/**
 * One-at-a-time execution of async operations on one object.
 *
 * Python's client is synchronous, so a session's decrypt runs to its end
 * before the next call starts. Here every WebCrypto call is a suspension
 * point, so two overlapping calls on one Session (or Device, GroupSession)
 * could both read the same chain key, or both accept the same one-time
 * prekey. Every public operation that reads and then changes a state runs
 * through that state's `Serial`, in call order; a failed operation does not
 * block the ones queued after it.
 *
 * Layer: encodings (imports nothing).
 */
export class Serial {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(operation: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(operation, operation);
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}
