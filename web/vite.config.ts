// `npm run build` → dist/, which nginx serves at / (tools/sb/nginx.py).
// `npm run dev` serves the page with hot reload and proxies the API and the WebSocket to a
// running platform: SB_DEV_TARGET (default http://127.0.0.1:18080, the first nginx of `./sb up`).
// The proxy presents the target's own origin, which the edges' allowlist accepts.
import { defineConfig } from "vite";

const target = process.env.SB_DEV_TARGET ?? "http://127.0.0.1:18080";

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: true,
  },
  server: {
    proxy: {
      "/api": { target, headers: { origin: target } },
      "/ws": { target, ws: true, headers: { origin: target } },
    },
  },
});
