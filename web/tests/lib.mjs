// Shared by the browser tests: the platform under test (SB_STACK_FILE, written by `./sb up`),
// Debian's Chromium through playwright-core, users made through the page or the HTTP API, and
// screenshots for docs/.

import { readFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomBytes } from "node:crypto";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = join(here, "..", "..");
export const SCREENSHOTS = process.env.SB_SCREENSHOT_DIR ?? join(REPO, "docs", "screenshots");

/** How long a live event may take to show up on the other page. */
export const LIVE_MS = 10_000;
export const PASSWORD = "correct-horse-42";

export function stack() {
  const file = process.env.SB_STACK_FILE;
  if (!file) {
    throw new Error("SB_STACK_FILE is not set: start a platform (`./sb up`) and point it at <state>/stack.json");
  }
  return JSON.parse(readFileSync(file, "utf8"));
}

/** Base URL of nginx instance `i` (the page and its API share this origin). */
export function nginx(i) {
  const all = stack().nginx;
  const a = all[i % all.length];
  return a.startsWith("http") ? a : `http://${a}`;
}

export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}

/** A fresh valid username: a letter first, then a–z 0–9 _ (≤ 32). */
export function uniqueName(prefix) {
  return `${prefix}_${randomBytes(5).toString("hex")}`.slice(0, 32);
}

export const PHONE = { width: 360, height: 740 };
export const DESKTOP = { width: 1280, height: 800 };

/**
 * A browser context on nginx `base` with a page that records what must never happen: page
 * errors, dialogs (alert/confirm from injected script), console errors (`problems.console`).
 */
export async function openPage(browser, base, viewport = DESKTOP, { userAgent } = {}) {
  const context = await browser.newContext({ baseURL: base, viewport, ...(userAgent ? { userAgent } : {}) });
  const page = await context.newPage();
  const problems = watch(page);
  await page.goto("/");
  return { context, page, problems, base };
}

/** Record what must never happen on a page: page errors, dialogs, console errors. */
function watch(page) {
  const problems = { dialogs: [], errors: [], console: [] };
  page.on("dialog", (d) => {
    problems.dialogs.push(d.message());
    void d.dismiss().catch(() => {});
  });
  page.on("pageerror", (e) => problems.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") problems.console.push(`${m.text()} ${m.location().url ?? ""}`.trim());
  });
  return problems;
}

/** Sign up and land in the signed-in shell, through the page's own forms. */
export async function signUpInPage(browser, base, name, { viewport = DESKTOP, beforeSubmit, userAgent } = {}) {
  const s = await openPage(browser, base, viewport, { userAgent });
  const { page } = s;
  await page.waitForSelector("#login");
  await page.click("#mode-switch");
  await page.fill("#username", name);
  await page.fill("#password", PASSWORD);
  if (beforeSubmit) await beforeSubmit(page);
  await page.click("#login-submit");
  await page.waitForSelector("#shell");
  await waitConnected(page);
  return { ...s, name };
}

/** The page's WebSocket is open (the status dot turns green, the banner hides). */
export async function waitConnected(page, timeout = LIVE_MS) {
  await page.waitForSelector('#conn-dot[data-status="open"]', { timeout });
}

export async function screenshot(page, name) {
  mkdirSync(SCREENSHOTS, { recursive: true });
  // passing notifications would hide parts of the screen in the documentation
  await page.evaluate(() => document.querySelectorAll(".toast").forEach((t) => t.remove()));
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`) });
}

/** Texts of the messages in the open conversation, top to bottom. */
export function messageTexts(page) {
  return page.locator("#messages .msg .text").allTextContents();
}

/** Send a message from the open conversation's composer. */
export async function sendInPage(page, text) {
  await page.fill("#composer-input", text);
  await page.click("#send");
}

/** Wait until my message `text` shows "sent" (the server acknowledged it). */
export async function waitSent(page, text, timeout = LIVE_MS) {
  await page
    .locator("#messages .msg.mine", { has: page.locator(".text", { hasText: exact(text) }) })
    .locator('.status:text-is("sent")')
    .waitFor({ timeout });
}

/** A RegExp that matches exactly `s` (for hasText). */
export function exact(s) {
  return new RegExp(`^${s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`);
}

// ---------------------------------------------------------------- HTTP API (no browser)

/** A user made over HTTP, holding its session cookie; `rpc` sends any WS frame over HTTP. */
export async function apiUser(base, name = uniqueName("api")) {
  const post = (path, body, cookie) =>
    fetch(`${base}${path}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-session-mode": "cookie", ...(cookie ? { cookie } : {}) },
      body: JSON.stringify(body),
    });
  let r = await post("/api/v1/users", { username: name, password: PASSWORD });
  let text = await r.text();
  assert.equal(r.status, 201, `sign up ${name}: ${text}`);
  const me = JSON.parse(text);
  r = await post("/api/v1/sessions", { username: name, password: PASSWORD });
  text = await r.text();
  assert.equal(r.status, 200, `log in ${name}: ${text}`);
  const body = JSON.parse(text);
  assert.equal(body.token, "", "cookie mode keeps the token out of the body");
  const set = r.headers.getSetCookie().find((c) => c.startsWith("sb_session="));
  assert.ok(set, "login sets the sb_session cookie");
  assert.match(set, /HttpOnly/i);
  assert.match(set, /SameSite=Strict/i);
  const token = set.split(";")[0].slice("sb_session=".length);
  const cookie = `sb_session=${token}`;
  const rpc = async (frame) => {
    const resp = await post("/api/v1/rpc", frame, cookie);
    const data = await resp.json();
    if (!resp.ok) throw new Error(`${frame.type}: ${resp.status} ${JSON.stringify(data)}`);
    return data;
  };
  return { name, userId: me.user.user_id, code: me.invite_code, token, cookie, rpc, base };
}

/** Connect two API users (a invites b, b accepts) and open their conversation; its id. */
export async function connectApiUsers(a, b) {
  await a.rpc({ type: "invite.send", code: b.code });
  await b.rpc({ type: "invite.respond", user_id: a.userId, accept: true });
  const r = await a.rpc({ type: "dm.open", user_id: b.userId });
  return r.conversation.conversation_id;
}

/** A browser context already holding an API user's session cookie. */
export async function pageAs(browser, user, viewport = DESKTOP) {
  const context = await browser.newContext({ baseURL: user.base, viewport });
  await context.addCookies([
    { name: "sb_session", value: user.token, url: user.base, httpOnly: true, sameSite: "Strict" },
  ]);
  const page = await context.newPage();
  const problems = watch(page);
  await page.goto("/");
  await page.waitForSelector("#shell");
  await waitConnected(page);
  return { context, page, problems, base: user.base, name: user.name };
}
