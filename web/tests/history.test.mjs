// Long conversations: the page shows the latest page, and scrolling to the top loads older
// pages (dm.history before_seq) until the beginning, keeping every message once, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import { apiUser, connectApiUsers, launch, messageTexts, nginx, pageAs, PHONE } from "./lib.mjs";

const N = 120;

test("scrolling up loads older messages until the beginning", { timeout: 90_000 }, async () => {
  const amy = await apiUser(nginx(0));
  const ben = await apiUser(nginx(1));
  const convId = await connectApiUsers(amy, ben);
  const expected = [];
  for (let i = 1; i <= N; i++) {
    const text = `message ${String(i).padStart(3, "0")}`;
    expected.push(text);
    const from = i % 3 === 0 ? ben : amy;
    await from.rpc({ type: "dm.send", conversation_id: convId, client_msg_id: `h-${i}`, text });
  }
  // a retried send (same client message id) must not show up twice
  const again = await amy.rpc({ type: "dm.send", conversation_id: convId, client_msg_id: "h-1", text: "message 001" });
  assert.equal(again.duplicate, true);

  const browser = await launch();
  try {
    const b = await pageAs(browser, ben, PHONE);
    // ben has unread messages from amy before opening the conversation
    const conv = b.page.locator(`#conv-list .conv[data-conv="${convId}"]`);
    assert.equal(await conv.locator(".unread").textContent(), String(expected.filter((_, i) => (i + 1) % 3 !== 0).length));
    await conv.click();
    await b.page.waitForSelector("#messages .msg");
    const first = await messageTexts(b.page);
    assert.ok(first.length >= 50 && first.length < N, `a first page, not everything (${first.length})`);
    assert.deepEqual(first, expected.slice(N - first.length));

    for (let i = 0; i < 10; i++) {
      if (await b.page.locator("#older-status", { hasText: "beginning of your conversation" }).count()) break;
      await b.page.evaluate(() => {
        document.getElementById("scroller").scrollTop = 0;
      });
      await b.page.waitForTimeout(400);
    }
    await b.page.locator("#older-status", { hasText: "beginning of your conversation" }).waitFor();
    assert.deepEqual(await messageTexts(b.page), expected);
    const seqs = await b.page.locator("#messages .msg").evaluateAll((els) => els.map((e) => Number(e.dataset.seq)));
    assert.deepEqual(seqs, expected.map((_, i) => i + 1));
    // reading it cleared the unread count
    await b.page.click("#dm .back");
    await conv.locator(".unread").waitFor({ state: "hidden" });
    assert.deepEqual(b.problems.errors, []);
  } finally {
    await browser.close();
  }
});
