// The message input's layout, measured in the browser: when a conversation opens it has exactly
// its one-line height with the placeholder whole (desktop and phone), it grows with the text
// without an inner scrollbar, and it goes back to one line after sending.

import { test } from "node:test";
import assert from "node:assert/strict";
import { DESKTOP, PHONE, apiUser, connectApiUsers, launch, nginx, pageAs, waitSent } from "./lib.mjs";

/** The composer's box against what one line (or `lines` lines) of text needs. */
function measure(page, lines = 1) {
  return page.evaluate((lines) => {
    const t = document.querySelector("#composer-input");
    const cs = getComputedStyle(t);
    const px = (v) => parseFloat(v);
    const line = px(cs.lineHeight);
    const chrome = px(cs.paddingTop) + px(cs.paddingBottom) + px(cs.borderTopWidth) + px(cs.borderBottomWidth);
    return {
      height: t.getBoundingClientRect().height,
      want: lines * line + chrome,
      line,
      // the text box inside the padding, and whether its content (the placeholder) fits it
      textBox: t.clientHeight - px(cs.paddingTop) - px(cs.paddingBottom),
      overflows: t.scrollHeight > t.clientHeight,
      placeholder: t.placeholder,
    };
  }, lines);
}

for (const [label, viewport] of [
  ["desktop", DESKTOP],
  ["phone", PHONE],
]) {
  test(`the message input opens at its one-line height with the placeholder whole (${label})`, { timeout: 60_000 }, async () => {
    const browser = await launch();
    try {
      const ann = await apiUser(nginx(0));
      const bob = await apiUser(nginx(1));
      const conv = await connectApiUsers(ann, bob);
      const a = await pageAs(browser, ann, viewport);
      const { page } = a;
      await page.click(`#conv-list .conv[data-conv="${conv}"] a`);
      await page.waitForSelector("#dm .empty");

      // opened: nothing typed yet
      const open = await measure(page);
      assert.equal(open.placeholder, "Write a message…");
      assert.ok(Math.abs(open.height - open.want) < 1, `height ${open.height} px, one line needs ${open.want} px`);
      assert.ok(open.textBox >= open.line - 0.5, `the placeholder's line (${open.line} px) fits in ${open.textBox} px`);
      assert.equal(open.overflows, false, "nothing is cut off");

      // one character: still one line, same height
      await page.type("#composer-input", "h");
      const one = await measure(page);
      assert.ok(Math.abs(one.height - one.want) < 1, `after a keystroke: ${one.height} vs ${one.want}`);
      assert.equal(one.overflows, false);

      // three lines: grows to fit them, no inner scrollbar
      await page.keyboard.down("Shift");
      await page.keyboard.press("Enter");
      await page.keyboard.press("Enter");
      await page.keyboard.up("Shift");
      await page.keyboard.type("there");
      const three = await measure(page, 3);
      assert.ok(Math.abs(three.height - three.want) < 1, `three lines: ${three.height} vs ${three.want}`);
      assert.equal(three.overflows, false, "three lines fit without scrolling");

      // sent: back to one line
      await page.keyboard.press("Enter");
      await waitSent(page, "h\n\nthere");
      const after = await measure(page);
      assert.ok(Math.abs(after.height - after.want) < 1, `after sending: ${after.height} vs ${after.want}`);
      assert.equal(after.overflows, false);

      if (process.env.SB_COMPOSER_SHOT) await page.screenshot({ path: `${process.env.SB_COMPOSER_SHOT}-${label}.png` });
      assert.deepEqual(a.problems.errors, []);
    } finally {
      await browser.close();
    }
  });
}
