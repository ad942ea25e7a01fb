// `npm run bench:load`: the web client's bundle size and first-load time in Chromium.
// Serves dist/ (run `npm run build` first) on 127.0.0.1 with the production CSP, opens
// it in fresh browser contexts (cold cache) and reports the median over --runs of:
// DOMContentLoaded, first contentful paint, and the log-in form on screen; locally and
// with the network throttled (1.6 Mbit/s down, 750 kbit/s up, 150 ms round trip).
import { readFileSync, readdirSync, statSync } from 'node:fs';
import http from 'node:http';
import { extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';

import { chromium } from 'playwright-core';

const dist = resolve(fileURLToPath(import.meta.url), '..', '..', '..', 'dist');
const runs = Number(process.argv[process.argv.indexOf('--runs') + 1] || 10) || 10;
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css' };
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'; worker-src 'none'";

const files = [join(dist, 'index.html'), ...readdirSync(join(dist, 'assets')).map((f) => join(dist, 'assets', f))];
console.log('bundle (what a first visit downloads):');
let raw = 0;
let gz = 0;
for (const f of files) {
  const body = readFileSync(f);
  raw += body.length;
  gz += gzipSync(body, { level: 9 }).length;
  console.log(`  ${f.slice(dist.length + 1).padEnd(34)} ${String(statSync(f).size).padStart(8)} B  ${String(gzipSync(body, { level: 9 }).length).padStart(7)} B gzip`);
}
console.log(`  total${' '.repeat(30)}${String(raw).padStart(8)} B  ${String(gz).padStart(7)} B gzip`);

const server = http.createServer((req, res) => {
  const path = req.url === '/' ? '/index.html' : req.url.split('?')[0];
  try {
    const body = readFileSync(join(dist, path));
    res.writeHead(200, { 'Content-Type': TYPES[extname(path)] ?? 'application/octet-stream', 'Content-Security-Policy': CSP });
    res.end(body);
  } catch {
    res.writeHead(404);
    res.end();
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const url = `http://127.0.0.1:${server.address().port}/`;
const browser = await chromium.launch({
  executablePath: process.env.PARLEY_CHROMIUM ?? '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
try {
  for (const [label, throttle] of [['local', null], ['throttled', { latency: 150, downloadThroughput: 200_000, uploadThroughput: 93_750 }]]) {
    const dcl = [];
    const fcp = [];
    const form = [];
    for (let i = 0; i < runs; i++) {
      const ctx = await browser.newContext();
      const page = await ctx.newPage();
      if (throttle) {
        const cdp = await ctx.newCDPSession(page);
        await cdp.send('Network.enable');
        await cdp.send('Network.emulateNetworkConditions', { offline: false, ...throttle });
      }
      await page.goto(url, { waitUntil: 'domcontentloaded' });
      form.push(await page.waitForFunction(() => document.getElementById('login') && performance.now(), null, { polling: 'raf' }).then((h) => h.jsonValue()));
      const t = await page.evaluate(() => ({
        dcl: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
        fcp: performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? NaN,
      }));
      dcl.push(t.dcl);
      fcp.push(t.fcp);
      await ctx.close();
    }
    console.log(
      `${label.padEnd(10)} median of ${runs}: DOMContentLoaded ${median(dcl).toFixed(0)} ms, first contentful paint ${median(fcp).toFixed(0)} ms, log-in form ${median(form).toFixed(0)} ms`,
    );
  }
  console.log(`Chromium ${browser.version()}`);
} finally {
  await browser.close();
  server.close();
}
