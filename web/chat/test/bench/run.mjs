// `npm run bench`: the library's throughput in Node and in Chromium, next to the Python
// client's Session figure measured here and now (same machine, same moment) by
// test/interop/parley_peer.py. Each figure is the best of --rounds (default 5) rounds of
// --duration seconds (default 0.3), the figures taking turns, as loadtest/bench_crypto.py.
// --json prints the raw results.

import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { bundle, withPage } from '../browser/harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(name) ? Number(args[args.indexOf(name) + 1]) : fallback);
const rounds = option('--rounds', 5);
const duration = option('--duration', 0.3);
const asJson = args.includes('--json');

// Node: bundle (the same code the browser gets) and import it.
const buildDir = join(here, '..', 'browser', '.build');
mkdirSync(buildDir, { recursive: true });
const nodeFile = join(buildDir, 'bench-node.mjs');
writeFileSync(nodeFile, await bundle(join(here, 'bench.ts'), 'node'));
const { runBench } = await import(pathToFileURL(nodeFile).href);
const node = await runBench(rounds, duration);

// Chromium.
const script = await bundle(join(here, 'entry-browser.ts'));
const html = '<!doctype html><meta charset="utf-8"><script type="module" src="/bundle.js"></script>';
const { results: browser, version } = await withPage(html, script, async (page, errors, v) => {
  await page.waitForFunction(() => typeof window.__parleyBench === 'function');
  const results = await page.evaluate(([r, d]) => window.__parleyBench(r, d), [rounds, duration]);
  if (errors.length) throw new Error(errors.join('\n'));
  return { results, version: v };
});

// Python, now, on the same machine (Session.encrypt + Session.decrypt, 200 B).
const repo = resolve(here, '..', '..', '..', '..');
const python = process.env.PARLEY_PYTHON ?? join(repo, '.venv', 'bin', 'python');
let pythonFigure = null;
if (existsSync(python)) {
  const run = spawnSync(python, ['-m', 'parley_peer'], {
    cwd: join(here, '..', 'interop'),
    input: JSON.stringify({ id: 1, op: 'bench_session', args: { rounds, duration } }) + '\n',
    encoding: 'utf8',
  });
  const answer = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}');
  if (answer.ok) pythonFigure = answer.result;
}

if (asJson) {
  console.log(JSON.stringify({ rounds, duration, node, browser, chromium: version, node_version: process.version, python: pythonFigure }, null, 2));
} else {
  const fmt = (n) => Math.round(n).toLocaleString('en-US');
  console.log(`Node ${process.version} · Chromium ${version} · best of ${rounds} rounds of ${duration} s\n`);
  console.log('| operation | Node, ops/s | Node, µs/op | Chromium, ops/s | Chromium, µs/op |');
  console.log('|---|---|---|---|---|');
  for (const [i, r] of node.entries()) {
    const c = browser[i];
    console.log(`| ${r.name} | ${fmt(r.perSecond)} | ${r.microsPerOp.toFixed(1)} | ${fmt(c.perSecond)} | ${c.microsPerOp.toFixed(1)} |`);
  }
  if (pythonFigure) {
    console.log(`\nPython (parley.crypto, same machine, now): Session.encrypt + Session.decrypt, 200 B: ${fmt(pythonFigure.per_second)} pairs/s (${pythonFigure.micros_per_op.toFixed(1)} µs)`);
  }
}
