// A socket the server drops (here: closed with the edge's idle code through Playwright's
// WebSocket routing, which otherwise passes every frame through untouched): the page shows
// "reconnecting…", reconnects by itself after its backoff delay, and catches up on what was sent
// meanwhile, once each, in order.

import { test } from "node:test";
import assert from "node:assert/strict";
import { LIVE_MS, apiUser, connectApiUsers, exact, launch, messageTexts, nginx } from "./lib.mjs";

test("a dropped socket reconnects by itself and catches up", { timeout: 60_000 }, async () => {
  const amy = await apiUser(nginx(1));
  const ben = await apiUser(nginx(0));
  const convId = await connectApiUsers(amy, ben);
  await amy.rpc({ type: "dm.send", conversation_id: convId, client_msg_id: "before", text: "before the drop" });

  const browser = await launch();
  try {
    const context = await browser.newContext({ baseURL: ben.base });
    await context.addCookies([
      { name: "sb_session", value: ben.token, url: ben.base, httpOnly: true, sameSite: "Strict" },
    ]);
    const page = await context.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(String(e)));
    const sockets = [];
    await page.routeWebSocket(/\/ws$/, (ws) => {
      sockets.push({ ws, server: ws.connectToServer() });
    });
    await page.goto(`/#/chats/${convId}`);
    await page.waitForSelector('#conn-dot[data-status="open"]');
    await page.locator("#messages .msg .text", { hasText: exact("before the drop") }).waitFor();
    assert.equal(sockets.length, 1);

    sockets[0].ws.close({ code: 4000, reason: "idle timeout" });
    sockets[0].server.close();
    await page.locator("#conn-banner", { hasText: "reconnecting" }).waitFor();
    const missed = ["gone 1", "gone 2", "gone 3"];
    for (const [i, text] of missed.entries()) {
      await amy.rpc({ type: "dm.send", conversation_id: convId, client_msg_id: `gone-${i}`, text });
    }

    await page.waitForSelector('#conn-dot[data-status="open"]', { timeout: LIVE_MS });
    assert.equal(sockets.length, 2, "one new socket, opened by the page itself");
    await page.locator("#messages .msg .text", { hasText: exact("gone 3") }).waitFor({ timeout: LIVE_MS });
    await page.waitForTimeout(300);
    assert.deepEqual(await messageTexts(page), ["before the drop", ...missed]);
    assert.equal(await page.isHidden("#conn-banner"), true);

    // and live delivery works on the new socket
    await amy.rpc({ type: "dm.send", conversation_id: convId, client_msg_id: "after", text: "after the drop" });
    await page.locator("#messages .msg .text", { hasText: exact("after the drop") }).waitFor({ timeout: LIVE_MS });
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
});
