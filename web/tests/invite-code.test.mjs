// A leaked invite code: the person asks for a new one in the page, the page shows it at once,
// the old code no longer invites them and the new one does.

import { test } from "node:test";
import assert from "node:assert/strict";
import { apiUser, launch, nginx, pageAs } from "./lib.mjs";

test("a new invite code replaces the old one", { timeout: 60_000 }, async () => {
  const browser = await launch();
  try {
    const bob = await apiUser(nginx(0));
    const ann = await apiUser(nginx(1));
    const p = await pageAs(browser, bob);
    await p.page.click("#tab-people");
    assert.equal(await p.page.inputValue("#my-code"), bob.code);

    await p.page.click("#new-code");
    await p.page.click("#dialog-confirm");
    await p.page.waitForFunction((old) => {
      const v = document.querySelector("#my-code")?.value;
      return v && v !== old;
    }, bob.code);
    const fresh = await p.page.inputValue("#my-code");
    assert.match(fresh, /^[A-Z0-9]{10}$/);

    await assert.rejects(ann.rpc({ type: "invite.send", code: bob.code }), /404|not_found/);
    const r = await ann.rpc({ type: "invite.send", code: fresh });
    assert.equal(r.link.user_id, bob.userId);
    assert.deepEqual(p.problems, { dialogs: [], errors: [], console: [] });
  } finally {
    await browser.close();
  }
});
