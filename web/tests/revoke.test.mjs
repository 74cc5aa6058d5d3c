// Sessions: the same person signed in on two devices sees both in "my sessions"; logging out
// everywhere from one sends the other page back to the login screen with a message, live.

import { test } from "node:test";
import assert from "node:assert/strict";
import { LIVE_MS, PASSWORD, PHONE, launch, nginx, openPage, signUpInPage, uniqueName, waitConnected } from "./lib.mjs";

test("logging out everywhere returns every other page to the login screen", { timeout: 90_000 }, async () => {
  const browser = await launch();
  try {
    const name = uniqueName("sam");
    const laptop = await signUpInPage(browser, nginx(0), name);

    // a second device logs in through the other nginx
    const phone = await openPage(browser, nginx(1), PHONE);
    await phone.page.waitForSelector("#login");
    await phone.page.fill("#username", name);
    await phone.page.fill("#password", "wrong-password-1");
    await phone.page.click("#login-submit");
    await phone.page.locator("#login-error", { hasText: "invalid username or password" }).waitFor();
    await phone.page.fill("#password", PASSWORD);
    await phone.page.click("#login-submit");
    await phone.page.waitForSelector("#shell");
    await waitConnected(phone.page);

    await phone.page.click("#tab-account");
    await phone.page.locator("#sessions .session").nth(1).waitFor();
    assert.equal(await phone.page.locator("#sessions .session").count(), 2);
    assert.equal(await phone.page.locator("#sessions .session.current").count(), 1);

    await phone.page.click("#logout-all");
    await phone.page.locator("#login-notice", { hasText: "every device" }).waitFor();

    // the laptop's page hears it over its socket
    await laptop.page.locator("#login-notice", { hasText: "signed out" }).waitFor({ timeout: LIVE_MS });
    await laptop.page.waitForSelector("#login");
    assert.equal(await laptop.page.isVisible("#shell"), false);

    // and its cookie no longer opens anything
    const me = await laptop.page.evaluate(async () => (await fetch("/api/v1/users/me")).status);
    assert.equal(me, 401);
    await laptop.page.reload();
    await laptop.page.waitForSelector("#login");

    for (const p of [laptop, phone]) {
      assert.deepEqual(p.problems.errors, []);
      assert.deepEqual(p.problems.dialogs, []);
    }
  } finally {
    await browser.close();
  }
});

test("logging out on one device leaves the other signed in", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const name = uniqueName("kim");
    const one = await signUpInPage(browser, nginx(0), name);
    const two = await openPage(browser, nginx(1));
    await two.page.fill("#username", name);
    await two.page.fill("#password", PASSWORD);
    await two.page.click("#login-submit");
    await waitConnected(two.page);

    await two.page.click("#tab-account");
    await two.page.click("#logout");
    await two.page.locator("#login-notice", { hasText: "logged out" }).waitFor();

    await one.page.waitForTimeout(1000);
    assert.equal(await one.page.isVisible("#shell"), true, "the other device stays signed in");
    await waitConnected(one.page);
  } finally {
    await browser.close();
  }
});

test("deleting the account asks for confirmation, signs out and ends the login", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const name = uniqueName("del");
    const p = await signUpInPage(browser, nginx(1), name, { viewport: PHONE });
    await p.page.click("#tab-account");
    await p.page.locator("#me-username", { hasText: name }).waitFor();
    await p.page.click("#delete-account");
    await p.page.waitForSelector("dialog[open]");
    assert.equal(await p.page.isDisabled("#dialog-confirm"), true, "nothing is deleted before the name is typed");
    await p.page.click("#dialog-cancel");
    await p.page.waitForSelector("dialog[open]", { state: "detached" });
    await p.page.click("#delete-account");
    await p.page.fill("#dialog-input", name);
    await p.page.click("#dialog-confirm");
    await p.page.locator("#login-notice", { hasText: "account was deleted" }).waitFor({ timeout: LIVE_MS });
    await p.page.fill("#username", name);
    await p.page.fill("#password", PASSWORD);
    await p.page.click("#login-submit");
    await p.page.locator("#login-error", { hasText: "invalid username or password" }).waitFor();
    assert.deepEqual(p.problems.errors, []);
  } finally {
    await browser.close();
  }
});
