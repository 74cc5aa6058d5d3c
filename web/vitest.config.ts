// Unit tests of the page's logic (no DOM, no server): src/**/*.test.ts. The browser tests in
// tests/ run under node's own test runner against a running platform.
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});
