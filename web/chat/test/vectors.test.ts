/**
 * The shared vectors (client/vectors), byte for byte, under Node's WebCrypto.
 * The same cases run in Chromium through test/browser/run.mjs.
 */

import { describe, expect, it } from 'vitest';

import { loadVector, vectorExists, vectorPath } from './support/vectors.ts';
import { PENDING_FILES, REQUIRED_FILES, VECTOR_CASES } from './vectors/suite.ts';

const byFile = new Map<string, typeof VECTOR_CASES>();
for (const c of VECTOR_CASES) byFile.set(c.file, [...(byFile.get(c.file) ?? []), c]);

describe('vector files', () => {
  it.each(REQUIRED_FILES)('%s is present with its provenance', (file) => {
    expect(vectorExists(file), vectorPath(file)).toBe(true);
    const v = loadVector(file) as { provenance?: unknown };
    expect(typeof v.provenance).toBe('string');
  });
  it('every file has cases', () => {
    for (const file of [...REQUIRED_FILES, ...PENDING_FILES]) expect(byFile.has(file), file).toBe(true);
  });
});

for (const file of REQUIRED_FILES) {
  describe(file, () => {
    const v = vectorExists(file) ? loadVector(file) : undefined;
    for (const c of byFile.get(file) ?? []) {
      it(c.name, async () => {
        expect(v, `${file} missing`).toBeDefined();
        await c.run(v);
      });
    }
  });
}

// device_list.json and link.json come with the Python implementation of docs/devices.md
// (another branch). Until they are in this checkout these cases are skipped, by name:
for (const file of PENDING_FILES) {
  const present = vectorExists(file);
  if (!present) {
    console.warn(`SKIPPED: ${vectorPath(file)} is not in this checkout yet (Python device lists/linking pending); its cases are skipped`);
  }
  describe.skipIf(!present)(`${file}${present ? '' : ' — SKIPPED: file not in client/vectors yet (Python device lists/linking pending)'}`, () => {
    const v = present ? loadVector(file) : undefined;
    for (const c of byFile.get(file) ?? []) {
      it(c.name, async () => {
        await c.run(v);
      });
    }
  });
}
