// The conversations list: peer, last message, time, unread count.

import { clock, fill, h, reconcile, setText } from "../dom";
import type { Conv } from "../state";
import { Subs, type AppCtx, type View } from "./ctx";

export function chatList(ctx: AppCtx, currentId: () => string | null): View & { refresh(): void } {
  const { state } = ctx;
  const subs = new Subs();
  const list = h("ul", { class: "conv-list", id: "conv-list", "aria-label": "Conversations" });
  const status = h("div", { class: "list-status" });
  const el = h(
    "section",
    { class: "chat-list", id: "chat-list" },
    h("div", { class: "section-head" }, h("h2", null, "Chats")),
    status,
    list,
  );
  const items = new Map<string, HTMLLIElement>();

  const item = (c: Conv): HTMLLIElement => {
    const id = c.summary.conversation_id;
    let li = items.get(id);
    if (!li) {
      li = h(
        "li",
        { class: "conv", "data-conv": id },
        h(
          "a",
          { href: `#/chats/${encodeURIComponent(id)}`, class: "conv-link" },
          h("span", { class: "avatar", "aria-hidden": "true" }),
          h(
            "span",
            { class: "conv-body" },
            h("span", { class: "conv-top" }, h("span", { class: "peer" }), h("time", { class: "when" })),
            h("span", { class: "conv-bottom" }, h("span", { class: "preview" }), h("span", { class: "unread" })),
          ),
        ),
      );
      items.set(id, li);
    }
    const s = c.summary;
    const q = <T extends Element>(sel: string) => li.querySelector(sel) as T;
    setText(q(".avatar"), (s.peer[0] ?? "?").toUpperCase());
    setText(q(".peer"), s.peer);
    const m = s.last_message;
    setText(q(".when"), m ? clock(m.sent_at_ms) : "");
    const mine = m?.author_id === state.me.user_id;
    setText(q(".preview"), m ? (mine ? "You: " : "") + m.text.replace(/\s+/g, " ").slice(0, 120) : "No messages yet");
    const unread = q<HTMLElement>(".unread");
    setText(unread, s.unread > 0 ? (s.unread > 99 ? "99+" : String(s.unread)) : "");
    unread.hidden = s.unread === 0;
    unread.setAttribute("aria-label", `${s.unread} unread`);
    li.classList.toggle("has-unread", s.unread > 0);
    li.classList.toggle("active", currentId() === id);
    return li;
  };

  const render = () => {
    const convs = state.sortedConvs();
    if (state.convsState === "loading" && !convs.length) {
      fill(status, h("p", { class: "muted loading" }, "Loading conversations…"));
    } else if (state.convsState === "error" && !convs.length) {
      fill(
        status,
        h("p", { class: "form-error" }, `Could not load conversations: ${state.convsError}`),
        h("button", { type: "button", onclick: () => void state.loadConversations() }, "Retry"),
      );
    } else if (!convs.length) {
      fill(
        status,
        h(
          "div",
          { class: "empty" },
          h("p", null, "No conversations yet."),
          h("p", { class: "muted" }, "Connect with someone in People, then say hi."),
          h("a", { href: "#/people", class: "button" }, "Find people"),
        ),
      );
    } else {
      status.replaceChildren();
    }
    reconcile(list, convs.map(item));
  };

  subs.add(state.on("convs", render));
  render();
  return { el, dispose: () => subs.dispose(), refresh: render };
}
