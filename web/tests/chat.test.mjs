// The scenario in a real browser: two people on different nginx instances sign up,
// one invites the other by code, the invite and the answer arrive live, they message both ways
// live, one goes offline while the other sends three messages, comes back and shows exactly
// those three once, in order. Every "live" step waits only for the event; nothing reloads or
// polls, so the test fails if live delivery stops working.

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  DESKTOP,
  LIVE_MS,
  PHONE,
  exact,
  launch,
  messageTexts,
  nginx,
  screenshot,
  sendInPage,
  signUpInPage,
  uniqueName,
  waitConnected,
  waitSent,
} from "./lib.mjs";

test("two people chat live across nginx instances and catch up after going offline", { timeout: 120_000 }, async () => {
  const browser = await launch();
  try {
    const annName = uniqueName("ann");
    const bobName = uniqueName("bob");
    const ann = await signUpInPage(browser, nginx(0), annName, {
      viewport: DESKTOP,
      beforeSubmit: (page) => screenshot(page, "login"),
    });
    const bob = await signUpInPage(browser, nginx(1), bobName, { viewport: PHONE });
    assert.equal(await ann.page.textContent("#me"), annName);
    assert.equal(await bob.page.textContent("#me"), bobName);
    // the empty states, not blank areas
    await ann.page.waitForSelector("#chat-list .empty");

    // --- bob's invite code; ann invites him with it
    await bob.page.click("#tab-people");
    const code = await bob.page.inputValue("#my-code");
    assert.match(code, /^[A-Z0-9]{6,16}$/);
    await screenshot(bob.page, "phone-people");
    await ann.page.click("#tab-people");
    await ann.page.fill("#invite-code", code);
    await ann.page.click("#invite-send");
    await ann.page.locator("#invite-result", { hasText: `Invite sent to ${bobName}` }).waitFor();
    await ann.page.locator("#outgoing .person", { hasText: bobName }).waitFor();

    // --- bob sees the invite arrive live (his page only loaded the list before it existed)
    const invite = bob.page.locator("#incoming .person", { hasText: annName });
    await invite.waitFor({ timeout: LIVE_MS });
    assert.equal(await bob.page.textContent("#tab-people .badge"), "1");
    await invite.locator("button.accept").click();
    await bob.page.locator("#connections .person", { hasText: annName }).waitFor();

    // --- ann sees the acceptance live and opens the conversation
    const bobRow = ann.page.locator("#connections .person", { hasText: bobName });
    await bobRow.waitFor({ timeout: LIVE_MS });
    await bobRow.locator("button.message").click();
    await ann.page.waitForSelector("#dm");
    const convId = await ann.page.getAttribute("#dm", "data-conv");
    assert.match(convId, /^[0-9]+$/);
    assert.equal(await ann.page.textContent("#dm-peer"), bobName);
    await ann.page.waitForSelector("#dm .empty");

    await sendInPage(ann.page, "hello bob");
    await waitSent(ann.page, "hello bob");

    // --- bob: the new conversation appears live in his list with one unread message
    await bob.page.click("#tab-chats");
    const conv = bob.page.locator(`#conv-list .conv[data-conv="${convId}"]`);
    await conv.locator(".unread", { hasText: exact("1") }).waitFor({ timeout: LIVE_MS });
    assert.match(await conv.locator(".preview").textContent(), /hello bob/);
    await screenshot(bob.page, "phone-chats");
    await conv.click();
    await bob.page.waitForSelector("#dm");
    await bob.page.locator("#messages .msg.theirs .text", { hasText: exact("hello bob") }).waitFor();
    await sendInPage(bob.page, "hi ann");
    await waitSent(bob.page, "hi ann");

    // --- ann gets bob's reply live, in the open conversation
    await ann.page.locator("#messages .msg.theirs .text", { hasText: exact("hi ann") }).waitFor({ timeout: LIVE_MS });
    assert.deepEqual(await messageTexts(ann.page), ["hello bob", "hi ann"]);
    await screenshot(ann.page, "dm");
    await bob.page.waitForTimeout(200);
    await screenshot(bob.page, "phone-dm");

    // --- bob goes offline; ann sends three messages meanwhile
    await bob.context.setOffline(true);
    await bob.page.locator("#conn-banner", { hasText: "reconnecting" }).waitFor({ timeout: LIVE_MS });
    const missed = ["missed one", "missed two", "missed three"];
    for (const m of missed) {
      await sendInPage(ann.page, m);
      await waitSent(ann.page, m);
    }
    await bob.page.waitForTimeout(500);
    assert.deepEqual(await messageTexts(bob.page), ["hello bob", "hi ann"], "nothing reaches an offline page");
    await screenshot(bob.page, "phone-reconnecting");

    // --- bob comes back: exactly the three missed messages, once each, in order
    await bob.context.setOffline(false);
    await waitConnected(bob.page, 20_000);
    await bob.page.locator("#messages .msg .text", { hasText: exact("missed three") }).waitFor({ timeout: LIVE_MS });
    await bob.page.waitForTimeout(500); // a duplicate arriving late would show up here
    assert.deepEqual(await messageTexts(bob.page), ["hello bob", "hi ann", ...missed]);
    const seqs = (await bob.page.locator("#messages .msg").evaluateAll((els) => els.map((e) => Number(e.dataset.seq))));
    assert.deepEqual(seqs, [1, 2, 3, 4, 5]);
    assert.equal(await bob.page.isHidden("#conn-banner"), true);

    // --- a message typed while offline waits as "sending…", then is sent once on reconnect
    await ann.context.setOffline(true);
    await ann.page.locator("#conn-banner", { hasText: "reconnecting" }).waitFor({ timeout: LIVE_MS });
    await sendInPage(ann.page, "typed while offline");
    const pending = ann.page.locator("#messages .msg.mine", { hasText: "typed while offline" });
    await pending.locator('.status:text-is("sending…")').waitFor();
    await ann.context.setOffline(false);
    await waitSent(ann.page, "typed while offline", 20_000);
    await bob.page.locator("#messages .msg .text", { hasText: exact("typed while offline") }).waitFor({ timeout: LIVE_MS });
    await bob.page.waitForTimeout(300);
    assert.deepEqual(await messageTexts(bob.page), ["hello bob", "hi ann", ...missed, "typed while offline"]);
    assert.deepEqual(await messageTexts(ann.page), ["hello bob", "hi ann", ...missed, "typed while offline"]);

    // --- unread counts: bob leaves the conversation, ann writes, bob's list counts it live
    await bob.page.click("#dm .back");
    await sendInPage(ann.page, "are you there?");
    await conv.locator(".unread", { hasText: exact("1") }).waitFor({ timeout: LIVE_MS });
    await conv.click();
    await bob.page.locator("#messages .msg .text", { hasText: exact("are you there?") }).waitFor();
    await bob.page.click("#dm .back");
    await conv.locator(".unread").waitFor({ state: "hidden" });
    await ann.page.click("#tab-chats");
    await screenshot(ann.page, "chats");

    // --- both are in the online list (paged: follow "Load more" until found)
    await ann.page.click("#tab-online");
    for (const who of [annName, bobName]) {
      const row = ann.page.locator("#online-list .person", { hasText: who });
      for (let i = 0; i < 40 && !(await row.count()); i++) {
        const more = ann.page.locator("#online-more:visible");
        if (await more.count()) await more.click();
        await ann.page.waitForTimeout(150);
      }
      await row.waitFor({ timeout: 2000 });
    }

    for (const p of [ann, bob]) {
      assert.deepEqual(p.problems.errors, [], "no script errors");
      assert.deepEqual(p.problems.dialogs, [], "no dialogs");
    }
  } finally {
    await browser.close();
  }
});
