// What the page relies on from nginx and the edges, checked without a browser: the page and
// its security headers at /, the API and WebSocket on the same origin, the Origin allowlist
// (the page's own origin is accepted, a foreign one refused), cookie-only sessions.

import { test } from "node:test";
import assert from "node:assert/strict";
import { request } from "node:http";
import { randomBytes } from "node:crypto";
import { apiUser, nginx } from "./lib.mjs";

/** GET (or `init`) a URL; its status, with the body read so no socket is left waiting. */
async function status(url, init) {
  const r = await fetch(url, init);
  await r.arrayBuffer();
  return r.status;
}

/** A WebSocket handshake by hand: the HTTP status it gets (101 = upgraded). */
function handshake(base, headers) {
  const u = new URL("/ws", base);
  return new Promise((resolve, reject) => {
    const req = request({
      host: u.hostname,
      port: u.port,
      path: u.pathname,
      agent: false,
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": randomBytes(16).toString("base64"),
        "sec-websocket-protocol": "switchboard.v1",
        ...headers,
      },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode, protocol: res.headers["sec-websocket-protocol"] });
    });
    req.on("response", (res) => {
      res.resume();
      resolve({ status: res.statusCode });
    });
    req.on("error", reject);
    req.setTimeout(10_000, () => req.destroy(new Error("handshake timed out")));
    req.end();
  });
}

test("both nginx instances serve the page with its security headers", async () => {
  for (const i of [0, 1]) {
    const r = await fetch(`${nginx(i)}/`);
    assert.equal(r.status, 200);
    assert.match(r.headers.get("content-type"), /text\/html/);
    assert.match(r.headers.get("content-security-policy"), /default-src 'self'/);
    assert.equal(r.headers.get("x-content-type-options"), "nosniff");
    const html = await r.text();
    assert.match(html, /<div id="app">/);
    const asset = html.match(/src="(\/assets\/[^"]+\.js)"/)[1];
    const js = await fetch(`${nginx(i)}${asset}`);
    assert.equal(js.status, 200);
    assert.match(js.headers.get("content-type"), /javascript/);
    await js.arrayBuffer();
    // a deep link gets the page too; the API and health stay with the edges
    assert.equal(await status(`${nginx(i)}/some/deep/link`), 200);
    assert.equal(await status(`${nginx(i)}/healthz`), 200);
    assert.equal(await status(`${nginx(i)}/api/v1/users/me`), 401);
  }
});

test("the WebSocket accepts the page's own origin and refuses others", async () => {
  const base = nginx(0);
  const u = await apiUser(base);
  const own = await handshake(base, { origin: base, cookie: u.cookie });
  assert.deepEqual(own, { status: 101, protocol: "switchboard.v1" });
  const other = await handshake(nginx(1), { origin: nginx(1), cookie: u.cookie });
  assert.equal(other.status, 101, "the second nginx's origin is the page's origin there");
  assert.equal((await handshake(base, { origin: "http://evil.example", cookie: u.cookie })).status, 403);
  assert.equal((await handshake(base, { origin: base })).status, 401, "no cookie, no socket");

  // the API refuses a foreign origin too (a cross-site form or fetch)
  const refused = await status(`${base}/api/v1/rpc`, {
    method: "POST",
    headers: { origin: "http://evil.example", cookie: u.cookie, "content-type": "application/json" },
    body: JSON.stringify({ type: "dm.list" }),
  });
  assert.equal(refused, 403);
});
