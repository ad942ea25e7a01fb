/**
 * The layer rules of README.md (as tests/crypto/test_crypto_layers.py for Python):
 * each module imports only from the layers below it, only primitives.ts touches
 * WebCrypto or @noble, nothing imports the public index, and imports have no cycle.
 */

import { readFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'crypto');
const modules = readdirSync(SRC)
  .filter((f) => f.endsWith('.ts'))
  .map((f) => f.replace(/\.ts$/, ''));
const source = (m: string): string => readFileSync(join(SRC, `${m}.ts`), 'utf8');
const importsOf = (m: string): string[] =>
  [...source(m).matchAll(/^(?:import|export)\s[^;]*?from\s+'([^']+)'/gms)].map((x) => x[1] as string);
const local = (m: string): string[] =>
  importsOf(m)
    .filter((s) => s.startsWith('./'))
    .map((s) => s.slice(2).replace(/\.ts$/, ''));

const LAYER: Record<string, number> = {
  errors: 0,
  encoding: 1,
  serial: 1,
  primitives: 2,
  bundle: 3,
  wire: 3,
  franking: 3,
  fingerprint: 3,
  pqxdh: 3,
  ratchet: 3,
  senderKeys: 3,
  device: 3,
  deviceList: 3,
  linking: 3,
  session: 4,
  index: 5,
};

describe('layers of src/crypto', () => {
  it('every module has a layer', () => {
    expect(modules.sort()).toEqual(Object.keys(LAYER).sort());
  });

  it.each(modules)('%s imports only from lower layers (protocols may import protocols)', (m) => {
    for (const dep of local(m)) {
      const mine = LAYER[m] as number;
      const theirs = LAYER[dep] as number;
      expect(theirs, `${m} imports ${dep}`).toBeDefined();
      expect(theirs < mine || (theirs === 3 && mine === 3), `${m} (layer ${mine}) imports ${dep} (layer ${theirs})`).toBe(true);
    }
  });

  it('only primitives.ts uses WebCrypto or @noble, and nothing uses Math.random', () => {
    for (const m of modules) {
      const text = source(m).replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, '');
      const external = importsOf(m).filter((s) => !s.startsWith('./'));
      if (m === 'primitives') {
        expect(external).toEqual(['@noble/post-quantum/ml-kem.js']);
      } else {
        expect(external, m).toEqual([]);
        expect(/crypto\.subtle|getRandomValues|globalThis\.crypto/.test(text), m).toBe(false);
      }
      expect(/Math\.random/.test(text), m).toBe(false);
    }
  });

  it('imports have no cycle', () => {
    const seen = new Set<string>();
    const visit = (m: string, path: string[]): void => {
      expect(path.includes(m), [...path, m].join(' -> ')).toBe(false);
      if (seen.has(m)) return;
      for (const dep of local(m)) visit(dep, [...path, m]);
      seen.add(m);
    };
    for (const m of modules) visit(m, []);
  });
});
