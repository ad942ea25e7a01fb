/**
 * Drives the Python peer (test/interop/parley_peer.py) as a subprocess: one JSON
 * request per line, answered in order. The interpreter is the repository's
 * virtualenv (`make install` creates it): <repo>/.venv/bin/python, or
 * PARLEY_PYTHON if set.
 */

import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { REPO_ROOT } from './vectors.ts';

export const PYTHON = process.env['PARLEY_PYTHON'] ?? join(REPO_ROOT, '.venv', 'bin', 'python');
const PEER_DIR = join(REPO_ROOT, 'web', 'chat', 'test', 'interop');

export class PythonError extends Error {
  constructor(
    readonly error: string,
    message: string,
  ) {
    super(`${error}: ${message}`);
    this.name = error;
  }
}

export class PythonPeer {
  readonly #child: ChildProcessWithoutNullStreams;
  readonly #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 1;
  #stderr = '';

  private constructor(child: ChildProcessWithoutNullStreams) {
    this.#child = child;
    child.stderr.on('data', (chunk: Buffer) => {
      this.#stderr += chunk.toString();
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
      const answer = JSON.parse(line) as { id: number; ok: boolean; result?: unknown; error?: string; message?: string };
      const waiter = this.#waiting.get(answer.id);
      this.#waiting.delete(answer.id);
      if (waiter === undefined) return;
      if (answer.ok) waiter.resolve(answer.result);
      else waiter.reject(new PythonError(answer.error ?? 'unknown', answer.message ?? ''));
    });
    child.on('exit', (code) => {
      for (const w of this.#waiting.values()) w.reject(new Error(`python peer exited (${code}): ${this.#stderr}`));
      this.#waiting.clear();
    });
  }

  static start(): PythonPeer {
    if (!existsSync(PYTHON)) {
      throw new Error(`${PYTHON} not found: run \`make install\` at the repository root (or set PARLEY_PYTHON)`);
    }
    const child = spawn(PYTHON, ['-m', 'parley_peer'], {
      cwd: PEER_DIR,
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1', PYTHONUNBUFFERED: '1' },
    });
    return new PythonPeer(child);
  }

  call<T = unknown>(op: string, args: Record<string, unknown> = {}): Promise<T> {
    const id = this.#next++;
    return new Promise<T>((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#child.stdin.write(JSON.stringify({ id, op, args }) + '\n');
    });
  }

  async stop(): Promise<void> {
    this.#child.stdin.end();
    await new Promise<void>((resolve) => {
      if (this.#child.exitCode !== null) resolve();
      else this.#child.once('exit', () => resolve());
    });
  }
}
