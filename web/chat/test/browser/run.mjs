// `npm run test:browser`: every vector case inside headless Chromium, with the browser's
// WebCrypto. Prints one line per case and "N passed, N failed, N skipped"; exits 1 on any
// failure. The vector files are read in place from ../../client/vectors.

import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { bundle, withPage } from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const vectorsDir = process.env.PARLEY_VECTORS_DIR ?? resolve(here, '..', '..', '..', '..', 'client', 'vectors');
const FILES = [
  'x25519_rfc7748.json', 'ed25519_rfc8032.json', 'hkdf_sha256_rfc5869.json', 'mlkem768_fips203.json',
  'bundle.json', 'pqxdh.json', 'ratchet.json', 'sender_keys.json', 'misc.json',
  'device_list.json', 'link.json',
];

const started = performance.now();
const files = {};
for (const f of FILES) {
  const path = join(vectorsDir, f);
  if (existsSync(path)) files[f] = JSON.parse(readFileSync(path, 'utf8'));
}
const script = await bundle(join(here, 'entry.ts'));
// JSON inside <script type="application/json">: only "</" needs escaping.
const data = JSON.stringify(files).replace(/<\//g, '<\\/');
const html = `<!doctype html><meta charset="utf-8"><title>parley crypto vectors</title>
<script type="application/json" id="vectors">${data}</script>
<script type="module" src="/bundle.js"></script>`;

const TIMEOUT_MS = Number(process.env.PARLEY_BROWSER_TIMEOUT_MS ?? 120_000);
const outcome = await withPage(html, script, async (page, errors, version) => {
  await page.waitForFunction(() => window.__parleyResults?.done === true, null, { timeout: TIMEOUT_MS, polling: 100 });
  const state = await page.evaluate(() => window.__parleyResults);
  return { ...state, errors, version };
});

console.log(`Chromium ${outcome.version} (secure context: ${outcome.secure})`);
let passed = 0;
let failed = 0;
let skipped = 0;
for (const r of outcome.results) {
  const mark = r.status === 'passed' ? '✓' : r.status === 'failed' ? '✗' : '↓';
  const ms = r.status === 'passed' ? ` ${Math.round(r.ms)}ms` : '';
  console.log(`  ${mark} ${r.file} > ${r.name}${ms}${r.message ? ` — ${r.message}` : ''}`);
  if (r.status === 'passed') passed++;
  else if (r.status === 'failed') failed++;
  else skipped++;
}
for (const e of outcome.errors) {
  console.log(`  ✗ page error: ${e}`);
  failed++;
}
if (outcome.results.length === 0) failed++;
console.log(`browser: ${passed} passed, ${failed} failed, ${skipped} skipped (${((performance.now() - started) / 1000).toFixed(1)} s)`);
process.exit(failed === 0 ? 0 : 1);
