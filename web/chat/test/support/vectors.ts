/** Where the shared vectors live (Node only): client/vectors at the repository root, read in place. */

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** web/chat/test/support -> repository root. */
export const REPO_ROOT = resolve(here, '..', '..', '..', '..');
/**
 * client/vectors relative to web/chat. PARLEY_VECTORS_DIR overrides it (only to try a
 * branch whose vector files are not merged yet; never needed in CI).
 */
export const VECTORS_DIR = process.env['PARLEY_VECTORS_DIR'] ?? join(REPO_ROOT, 'client', 'vectors');

export function vectorPath(file: string): string {
  return join(VECTORS_DIR, file);
}

export function vectorExists(file: string): boolean {
  return existsSync(vectorPath(file));
}

export function loadVector(file: string): unknown {
  return JSON.parse(readFileSync(vectorPath(file), 'utf8')) as unknown;
}
