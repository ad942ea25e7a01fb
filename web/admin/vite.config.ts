import { defineConfig } from "vite";

// Served at /admin/ (services/web locally, S3 + CloudFront in production).
export default defineConfig({
  base: "/admin/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, modulePreload: { polyfill: false } },
});
