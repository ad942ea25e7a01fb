// Shared by test/browser/run.mjs and test/bench/run.mjs: bundle a TypeScript entry with
// esbuild (in memory) and open it in the system's Chromium through playwright-core.
// Never downloads a browser: /usr/bin/chromium (Debian's package), or PARLEY_CHROMIUM.

import { existsSync } from 'node:fs';
import http from 'node:http';

import { build } from 'esbuild';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.PARLEY_CHROMIUM ?? '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'];

export async function bundle(entry, platform = 'browser') {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    write: false,
    format: 'esm',
    platform,
    target: platform === 'browser' ? 'chrome120' : 'node20',
    sourcemap: false,
    logLevel: 'warning',
  });
  return result.outputFiles[0].text;
}

/** Serve `html` at / and `script` at /bundle.js on 127.0.0.1 (a secure context), open it, call `use(page)`. */
export async function withPage(html, script, use) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} not found: apt-get install -y chromium (or set PARLEY_CHROMIUM)`);
  }
  const server = http.createServer((req, res) => {
    if (req.url === '/bundle.js') {
      res.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      res.end(script);
    } else if (req.url === '/' || req.url === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(html);
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: ARGS, headless: true });
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(String(e)));
    await page.goto(`http://127.0.0.1:${server.address().port}/`);
    return await use(page, errors, await browser.version());
  } finally {
    await browser.close();
    await new Promise((resolve) => server.close(resolve));
  }
}
