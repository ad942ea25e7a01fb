/**
 * The Chromium half of `npm test`: the same vector cases as test/vectors.test.ts,
 * bundled by esbuild and run in a page (test/browser/run.mjs), with the
 * browser's own WebCrypto. The runner puts the vector files in the page; this
 * reports every case on `window.__parleyResults`.
 */

import { runAll } from '../vectors/suite.ts';

interface Result {
  file: string;
  name: string;
  status: 'passed' | 'failed' | 'skipped';
  message?: string;
  ms: number;
}

declare global {
  interface Window {
    __parleyResults?: { done: boolean; results: Result[]; userAgent: string; secure: boolean };
  }
}

async function main(): Promise<void> {
  const state = { done: false, results: [] as Result[], userAgent: navigator.userAgent, secure: window.isSecureContext };
  window.__parleyResults = state;
  const element = document.getElementById('vectors');
  const files = JSON.parse(element?.textContent ?? '{}') as Record<string, unknown>;
  await runAll(files, (r) => {
    state.results.push(r);
    console.log(`${r.status} ${r.file} > ${r.name}${r.message === undefined ? '' : ` — ${r.message}`}`);
  });
  state.done = true;
}

void main();
