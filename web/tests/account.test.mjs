// The signed-in page's finish: a first visit checks for a session without a failed request in
// the console; "Your sessions" names each device (from its browser) and its last use; the
// account page shows the person's name, not their numeric id; an invite's toast goes as soon as
// the invite is answered, and toasts never cover a conversation's header.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DESKTOP,
  LIVE_MS,
  PASSWORD,
  PHONE,
  apiUser,
  launch,
  nginx,
  openPage,
  signUpInPage,
  uniqueName,
  waitConnected,
} from "./lib.mjs";

const LINUX_CHROME =
  "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36";
const ANDROID_CHROME =
  "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36";

/** Every API answer with a 4xx/5xx status the page got. */
function failedResponses(page) {
  const failed = [];
  page.on("response", (r) => {
    if (r.status() >= 400) failed.push(`${r.status()} ${r.request().method()} ${r.url()}`);
  });
  return failed;
}

test("a first visit and a return visit check the session without an error in the console", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const context = await browser.newContext({ baseURL: nginx(0), viewport: DESKTOP });
    const page = await context.newPage();
    const console = [];
    page.on("console", (m) => {
      if (m.type() === "error" || m.type() === "warning") console.push(`${m.type()}: ${m.text()}`);
    });
    const failed = failedResponses(page);
    const checks = [];
    page.on("response", (r) => {
      if (new URL(r.url()).pathname.startsWith("/api/")) checks.push(`${r.status()} ${new URL(r.url()).pathname}`);
    });

    // first visit: no cookie at all
    await page.goto("/");
    await page.waitForSelector("#login");
    assert.deepEqual(checks, ["200 /api/v1/sessions/current"]);
    assert.deepEqual(failed, []);
    assert.deepEqual(console, []);

    // a cookie whose session is gone: the login screen, still no error, and the cookie is cleared
    await context.addCookies([{ name: "sb_session", value: "x".repeat(43), url: nginx(0), httpOnly: true, sameSite: "Strict" }]);
    await page.reload();
    await page.waitForSelector("#login");
    assert.deepEqual(failed, []);
    assert.deepEqual(console, []);
    assert.equal((await context.cookies()).some((c) => c.name === "sb_session"), false, "the dead cookie is cleared");

    // signed up, then back later: straight to the signed-in page, still nothing in the console
    const name = uniqueName("vis");
    await page.click("#mode-switch");
    await page.fill("#username", name);
    await page.fill("#password", PASSWORD);
    await page.click("#login-submit");
    await page.waitForSelector("#shell");
    await waitConnected(page);
    await page.reload();
    await page.waitForSelector("#shell");
    await waitConnected(page);
    assert.equal(await page.textContent("#me"), name);
    assert.deepEqual(failed, []);
    assert.deepEqual(console, []);
  } finally {
    await browser.close();
  }
});

test("your sessions name each device and its last use; the account page shows the name, not the id", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const name = uniqueName("dev");
    const laptop = await signUpInPage(browser, nginx(0), name, { userAgent: LINUX_CHROME });
    const phone = await openPage(browser, nginx(1), PHONE, { userAgent: ANDROID_CHROME });
    await phone.page.fill("#username", name);
    await phone.page.fill("#password", PASSWORD);
    await phone.page.click("#login-submit");
    await phone.page.waitForSelector("#shell");
    await waitConnected(phone.page);

    await phone.page.click("#tab-account");
    const rows = phone.page.locator("#sessions .session");
    await rows.nth(1).waitFor();
    assert.equal(await rows.count(), 2);
    const current = phone.page.locator("#sessions .session.current");
    assert.equal(await current.locator(".device").textContent(), "Chrome on Android");
    assert.equal(await current.locator(".tag").textContent(), "this device");
    assert.match(await current.locator(".when-used").textContent(), /^active now · signed in just now$/);
    const other = phone.page.locator("#sessions .session:not(.current)");
    assert.equal(await other.locator(".device").textContent(), "Chrome on Linux");
    assert.match(await other.locator(".when-used").textContent(), /^last active (just now|\d+ min ago) · signed in /);
    const list = await phone.page.textContent("#sessions");
    assert.doesNotMatch(list, /Session [0-9a-f]{8}/, "no session ids for names");

    // the profile: the name and when the account was made; the numeric id is nowhere on the page
    const me = await phone.page.evaluate(async () => (await fetch("/api/v1/sessions/current")).json());
    assert.equal(me.kind, "user");
    assert.equal(await phone.page.textContent("#me-username"), name);
    assert.match(await phone.page.textContent("#me-since"), /^Member since .*\d{4}/);
    assert.equal(await phone.page.textContent("#me-code"), me.invite_code);
    const text = await phone.page.evaluate(() => document.body.innerText);
    assert.ok(!text.includes(me.user.user_id), "the user id is not shown");
    assert.doesNotMatch(text, /User id/i);

    // the laptop sees the phone by its browser too
    await laptop.page.click("#tab-account");
    await laptop.page.locator("#sessions .session:not(.current) .device", { hasText: "Chrome on Android" }).waitFor();
    for (const p of [laptop, phone]) {
      assert.deepEqual(p.problems.errors, []);
      assert.deepEqual(p.problems.console, []);
    }
  } finally {
    await browser.close();
  }
});

/** Does the first visible toast overlap the conversation header? Both boxes, for the message. */
function toastAndHeader(page) {
  return page.evaluate(() => {
    const box = (el) => {
      const r = el.getBoundingClientRect();
      return { top: r.top, bottom: r.bottom, left: r.left, right: r.right };
    };
    const t = document.querySelector("#toasts .toast");
    const head = document.querySelector(".dm-head");
    if (!t || !head) return null;
    const a = box(t);
    const b = box(head);
    const overlap = a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
    return { toast: a, header: b, overlap, text: t.textContent };
  });
}

for (const [label, viewport] of [
  ["desktop", DESKTOP],
  ["phone", PHONE],
]) {
  test(`an invite's toast goes when the invite is answered; toasts never cover the conversation header (${label})`, { timeout: 60_000 }, async () => {
    const browser = await launch();
    try {
      const ann = await signUpInPage(browser, nginx(0), uniqueName("tst"), { viewport });
      const { page } = ann;
      const code = await page.evaluate(async () => (await (await fetch("/api/v1/sessions/current")).json()).invite_code);

      // bob invites ann: her toast stays while the invite waits, and goes the moment she accepts
      const bob = await apiUser(nginx(1));
      await bob.rpc({ type: "invite.send", code });
      const toast = page.locator("#toasts .toast", { hasText: `${bob.name} invited you to connect` });
      await toast.waitFor({ timeout: LIVE_MS });
      await page.click("#tab-people");
      const invite = page.locator("#incoming .person", { hasText: bob.name });
      await invite.waitFor();
      await invite.locator("button.accept").click();
      await page.locator("#connections .person", { hasText: bob.name }).waitFor();
      await toast.waitFor({ state: "detached", timeout: 1000 });

      // cat's invite is declined: its toast goes too
      const cat = await apiUser(nginx(1));
      await cat.rpc({ type: "invite.send", code });
      const catToast = page.locator("#toasts .toast", { hasText: `${cat.name} invited you to connect` });
      await catToast.waitFor({ timeout: LIVE_MS });
      await page.locator("#incoming .person", { hasText: cat.name }).locator("button.reject").click();
      await catToast.waitFor({ state: "detached", timeout: 1000 });

      // ann invites dan; his answer's toast is up when she opens their conversation: it sits
      // below the conversation's header, not over it
      const dan = await apiUser(nginx(1));
      await page.fill("#invite-code", dan.code);
      await page.click("#invite-send");
      await page.locator("#outgoing .person", { hasText: dan.name }).waitFor();
      await dan.rpc({ type: "invite.respond", user_id: (await page.evaluate(async () => (await (await fetch("/api/v1/sessions/current")).json()).user.user_id)), accept: true });
      const danToast = page.locator("#toasts .toast", { hasText: `${dan.name} accepted your invite` });
      await danToast.waitFor({ timeout: LIVE_MS });
      await page.locator("#connections .person", { hasText: dan.name }).locator("button.message").click();
      await page.waitForSelector("#dm .dm-head");
      await danToast.waitFor();
      const m = await toastAndHeader(page);
      assert.ok(m, "a toast and a header are on screen");
      assert.equal(m.overlap, false, `toast ${JSON.stringify(m.toast)} covers header ${JSON.stringify(m.header)}`);
      assert.ok(m.toast.top >= m.header.bottom, "below the header");
      if (process.env.SB_TOAST_SHOT) await page.screenshot({ path: `${process.env.SB_TOAST_SHOT}-${label}.png` });

      assert.deepEqual(ann.problems.errors, []);
      assert.deepEqual(ann.problems.console, []);
    } finally {
      await browser.close();
    }
  });
}
