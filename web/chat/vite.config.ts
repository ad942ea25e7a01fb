import { defineConfig } from 'vite';

// The chat app, served at / (services/web locally, S3 + CloudFront in production);
// the same set-up as web/admin (Preact through Vite's own JSX transform).
export default defineConfig({
  base: '/',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, modulePreload: { polyfill: false }, target: 'es2022' },
});
