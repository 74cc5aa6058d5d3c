// The lobby: broadcasts to everyone connected, live. There is no lobby history on the server, so
// the feed starts when the page opens.

import { describe } from "../api";
import { clock, fill, h, reconcile, utf8Length } from "../dom";
import { TEXT_MAX, type BroadcastEvent } from "../types";
import { Subs, type AppCtx, type View } from "./ctx";

export function lobbyView(ctx: AppCtx): View {
  const { state } = ctx;
  const subs = new Subs();
  const feed = h("ol", { class: "feed", id: "lobby-feed", role: "log", "aria-live": "polite" });
  const status = h("div", { class: "list-status" });
  const input = h("textarea", {
    id: "lobby-input",
    rows: 2,
    placeholder: "Announce something to everyone online…",
    "aria-label": "Broadcast message",
  });
  const btn = h("button", { type: "submit", class: "primary", id: "lobby-send" }, "Broadcast");
  const result = h("p", { class: "form-result", role: "status", id: "lobby-result" });
  const form = h(
    "form",
    {
      class: "composer lobby-composer",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        const text = input.value;
        if (!text.trim()) return;
        if (utf8Length(text) > TEXT_MAX) {
          result.className = "form-result form-error";
          result.textContent = `At most ${TEXT_MAX} bytes.`;
          return;
        }
        btn.disabled = true;
        result.className = "form-result muted";
        result.textContent = "Sending…";
        try {
          await state.broadcast(text);
          input.value = "";
          result.textContent = "";
        } catch (e) {
          result.className = "form-result form-error";
          result.textContent = describe(e);
        } finally {
          btn.disabled = false;
        }
      },
    },
    input,
    btn,
  );

  const items = new WeakMap<BroadcastEvent, HTMLLIElement>();
  const item = (b: BroadcastEvent) => {
    let li = items.get(b);
    if (!li) {
      li = h(
        "li",
        { class: `announcement${b.from_user_id === state.me.user_id ? " mine" : ""}` },
        h("div", { class: "meta" }, h("strong", { class: "from" }, b.from), " ", h("time", null, clock(b.sent_at_ms))),
        h("p", { class: "text" }, b.text),
      );
      items.set(b, li);
    }
    return li;
  };
  const render = () => {
    reconcile(feed, state.lobby.map(item));
    if (!state.lobby.length)
      fill(status, h("p", { class: "empty muted" }, "No announcements since you opened this page. Broadcasts reach everyone online."));
    else status.replaceChildren();
    feed.lastElementChild?.scrollIntoView({ block: "nearest" });
  };
  subs.add(state.on("lobby", render));
  render();
  const el = h(
    "section",
    { class: "page lobby-page", id: "lobby" },
    h("h2", null, "Lobby"),
    h("section", { class: "card feed-card" }, status, feed),
    h("section", { class: "card" }, form, result),
  );
  return { el, dispose: () => subs.dispose() };
}
