// A conversation opened again in the same page (its messages already loaded) shows its newest
// messages, as on the first open: the view is positioned once it is in the document.

import { test } from "node:test";
import assert from "node:assert/strict";
import { DESKTOP, apiUser, connectApiUsers, launch, nginx, pageAs } from "./lib.mjs";

test("a conversation opened again shows its newest messages", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const ann = await apiUser(nginx(0));
    const bob = await apiUser(nginx(1));
    const conv = await connectApiUsers(ann, bob);
    for (let i = 0; i < 40; i++) {
      await bob.rpc({ type: "dm.send", conversation_id: conv, client_msg_id: `m${i}`, text: `message ${i}` });
    }
    const a = await pageAs(browser, ann, DESKTOP);
    const { page } = a;
    const open = async () => {
      await page.click("#tab-chats");
      await page.click(`#conv-list .conv[data-conv="${conv}"] a`);
      await page.locator("#messages .msg .text", { hasText: "message 39" }).waitFor();
    };
    // how far the newest message is from the bottom of the view
    const gap = () =>
      page.evaluate(() => {
        const s = document.querySelector("#scroller");
        return s.scrollHeight - s.clientHeight - s.scrollTop;
      });
    await open();
    await page.waitForFunction(() => {
      const s = document.querySelector("#scroller");
      return s.scrollHeight > s.clientHeight;
    });
    assert.ok((await gap()) < 2, "first open: at the bottom");

    await page.click("#tab-people");
    await page.waitForSelector("#incoming");
    await open();
    assert.ok((await gap()) < 2, `opened again: ${await gap()} px above the bottom`);
    assert.deepEqual(a.problems.errors, []);
  } finally {
    await browser.close();
  }
});
