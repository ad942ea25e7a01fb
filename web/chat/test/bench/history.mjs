// `npm run bench:history`: what a message costs the browser's vault as a conversation
// grows, the one-row layout (before chunks) beside chunks (src/app/history.ts), in
// Chromium with the real vault (test/bench/history.ts says what is measured).
// --sizes 100,1000,10000 --ops 30 --backlog 2000 --into 10000

import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { bundle, withPage } from '../browser/harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? args[args.indexOf(name) + 1] : fallback);
const sizes = option('--sizes', '100,1000,10000').split(',').map(Number);
const ops = Number(option('--ops', '30'));
const backlogOf = Number(option('--backlog', '2000'));
const into = Number(option('--into', '10000'));

const script = await bundle(join(here, 'history.ts'));
const html = '<!doctype html><meta charset="utf-8"><script type="module" src="/bundle.js"></script>';
const { result, version } = await withPage(html, script, async (page, errors, v) => {
  await page.waitForFunction(() => typeof window.__parleyHistoryBench === 'function');
  const result = await page.evaluate((a) => window.__parleyHistoryBench(...a), [sizes, ops, backlogOf, into]);
  if (errors.length) throw new Error(errors.join('\n'));
  return { result, version: v };
});

const ms = (n) => n.toFixed(2);
console.log(`Chromium ${version} · median of ${ops} messages per size and layout\n`);
console.log('| entries in the conversation | layout | new message, ms | receipt, ms | largest row written, KiB |');
console.log('|---|---|---|---|---|');
for (const f of result.figures) {
  console.log(`| ${f.size.toLocaleString('en-US')} | ${f.layout} | ${ms(f.appendMs)} | ${ms(f.receiptMs)} | ${f.rowKiB.toFixed(0)} |`);
}
const b = result.backlog;
console.log(
  `\nA backlog of ${b.count.toLocaleString('en-US')} messages into a conversation of ${b.size.toLocaleString('en-US')}, one transaction each: ` +
    `one row ${b.seconds['one row'].toFixed(1)} s, chunks ${b.seconds.chunks.toFixed(1)} s`,
);
