// Every user string renders as text: markup in a message or a broadcast shows literally, no
// script runs, no dialog opens. Also: page scripts cannot read the session token.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  LIVE_MS,
  PHONE,
  apiUser,
  connectApiUsers,
  exact,
  launch,
  messageTexts,
  nginx,
  pageAs,
  sendInPage,
  waitSent,
} from "./lib.mjs";

const PAYLOADS = [
  `<script>window.__xss = 1; alert("xss-script")</script>`,
  `<img src=x onerror="window.__xss = 2; alert('xss-img')">`,
  `"><svg onload=alert("xss-svg")><b>bold?</b>`,
];

test("markup in messages and broadcasts is shown as text and never runs", { timeout: 90_000 }, async () => {
  const eve = await apiUser(nginx(0));
  const dan = await apiUser(nginx(1));
  const convId = await connectApiUsers(eve, dan);
  const browser = await launch();
  try {
    const e = await pageAs(browser, eve);
    const d = await pageAs(browser, dan, PHONE);

    // The token is only in an HttpOnly cookie: not in document.cookie, storage or the URL.
    for (const p of [e, d]) {
      const seen = await p.page.evaluate(() => ({
        cookie: document.cookie,
        local: JSON.stringify({ ...localStorage }),
        session: JSON.stringify({ ...sessionStorage }),
        url: location.href,
      }));
      assert.doesNotMatch(seen.cookie, /sb_session/);
      for (const v of Object.values(seen)) assert.ok(!v.includes(eve.token) && !v.includes(dan.token));
    }

    await e.page.goto(`/#/chats/${convId}`);
    await e.page.waitForSelector("#dm");
    await d.page.goto(`/#/chats/${convId}`);
    await d.page.waitForSelector("#dm");
    for (const text of PAYLOADS) {
      await sendInPage(e.page, text);
      await waitSent(e.page, text);
    }
    // dan receives them live and shows them verbatim
    await d.page.locator("#messages .msg.theirs .text", { hasText: exact(PAYLOADS[2]) }).waitFor({ timeout: LIVE_MS });
    assert.deepEqual(await messageTexts(d.page), PAYLOADS);
    assert.deepEqual(await messageTexts(e.page), PAYLOADS);

    // …and after a reload (history path) too
    await d.page.reload();
    await d.page.waitForSelector("#messages .msg");
    assert.deepEqual(await messageTexts(d.page), PAYLOADS);

    // a broadcast with markup, seen by both in the lobby
    await e.page.click("#tab-lobby");
    await d.page.goto("/#/lobby");
    await d.page.waitForSelector("#lobby");
    await e.page.waitForSelector('#conn-dot[data-status="open"]');
    await d.page.waitForSelector('#conn-dot[data-status="open"]');
    const shout = `<img src=x onerror="alert('xss-lobby')"> hello everyone`;
    await e.page.fill("#lobby-input", shout);
    await e.page.click("#lobby-send");
    for (const p of [e, d]) {
      await p.page.locator("#lobby-feed .text", { hasText: exact(shout) }).waitFor({ timeout: LIVE_MS });
    }

    await d.page.waitForTimeout(300);
    for (const p of [e, d]) {
      const found = await p.page.evaluate(() => ({
        injected: document.querySelectorAll("#messages img, #messages script, #messages svg, #messages b, #lobby-feed img").length,
        flag: window.__xss ?? null,
      }));
      assert.deepEqual(found, { injected: 0, flag: null });
      assert.deepEqual(p.problems.dialogs, [], "no dialog may open");
      assert.deepEqual(p.problems.errors, []);
    }
  } finally {
    await browser.close();
  }
});
