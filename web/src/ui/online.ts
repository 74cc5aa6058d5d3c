// Who is online now, across every edge, a page at a time (cursor pagination).

import { describe } from "../api";
import { append, fill, h } from "../dom";
import type { OnlineUser } from "../types";
import { Subs, type AppCtx, type View } from "./ctx";

export function onlineView(ctx: AppCtx): View {
  const { state } = ctx;
  const subs = new Subs();
  const list = h("ul", { class: "people", id: "online-list" });
  const status = h("div", { class: "list-status", id: "online-status" });
  const more = h("button", { type: "button", id: "online-more" }, "Load more");
  const refresh = h("button", { type: "button", id: "online-refresh" }, "Refresh");
  let cursor: string | null = null;
  let loading = false;
  let shown = 0;

  const userRow = (u: OnlineUser) => {
    const me = u.user_id === state.me.user_id;
    const link = state.links.get(u.user_id);
    const connected = link?.state === "accepted";
    const msg = connected ? h("button", { type: "button", class: "primary" }, "Message") : null;
    msg?.addEventListener("click", async () => {
      msg.disabled = true;
      try {
        ctx.navigate(`#/chats/${encodeURIComponent(await state.openDm(u.user_id))}`);
      } catch (e) {
        msg.disabled = false;
        fill(status, h("p", { class: "form-error" }, describe(e)));
      }
    });
    return h(
      "li",
      { class: "person", "data-user": u.user_id },
      h("span", { class: "avatar online", "aria-hidden": "true" }, (u.username[0] ?? "?").toUpperCase()),
      h(
        "span",
        { class: "who" },
        h("span", { class: "name" }, u.username || "(unknown)"),
        me ? h("span", { class: "muted small" }, "you") : connected ? h("span", { class: "muted small" }, "connection") : null,
      ),
      h("span", { class: "actions" }, msg),
    );
  };

  const load = async (reset: boolean) => {
    if (loading) return;
    loading = true;
    more.disabled = refresh.disabled = true;
    if (reset) {
      cursor = null;
      shown = 0;
      list.replaceChildren();
    }
    fill(status, h("p", { class: "muted loading" }, "Loading who is online…"));
    try {
      const page = await state.online(cursor);
      append(list, page.users.map(userRow));
      shown += page.users.length;
      cursor = page.next;
      if (!shown) fill(status, h("p", { class: "empty muted" }, "Nobody is online right now."));
      else status.replaceChildren();
    } catch (e) {
      fill(
        status,
        h("p", { class: "form-error" }, `Could not load the online list: ${describe(e)}`),
        h("button", { type: "button", onclick: () => void load(reset) }, "Retry"),
      );
    } finally {
      loading = false;
      refresh.disabled = false;
      more.disabled = false;
      more.hidden = !cursor;
    }
  };
  more.hidden = true;
  more.addEventListener("click", () => void load(false));
  refresh.addEventListener("click", () => void load(true));

  const el = h(
    "section",
    { class: "page online-page", id: "online" },
    h("div", { class: "section-head" }, h("h2", null, "Online now"), refresh),
    h("section", { class: "card" }, list, status, more),
  );
  // The socket may still be connecting when the page opens: load once it is up.
  const start = () => {
    if (ctx.conn.isOpen() && !shown && !loading && !cursor) void load(true);
  };
  subs.add(state.on("conn", start));
  start();
  if (!ctx.conn.isOpen()) fill(status, h("p", { class: "muted loading" }, "Connecting…"));
  return { el, dispose: () => subs.dispose() };
}
