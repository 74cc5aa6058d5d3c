// One conversation: history (older pages load when scrolled to the top), live messages, and the
// composer with its optimistic "sending…" → "sent" states.

import { clock, fill, h, reconcile, setText, utf8Length } from "../dom";
import type { Entry } from "../state";
import { TEXT_MAX, type Id } from "../types";
import { Subs, type AppCtx, type View } from "./ctx";

const NEAR_TOP_PX = 120;
const NEAR_BOTTOM_PX = 80;

export function dmView(ctx: AppCtx, id: Id): View {
  const { state } = ctx;
  const subs = new Subs();

  const peer = h("h2", { class: "peer-name", id: "dm-peer" });
  const header = h(
    "header",
    { class: "dm-head" },
    h("a", { href: "#/chats", class: "back", "aria-label": "Back to chats" }, "‹"),
    h("span", { class: "avatar", "aria-hidden": "true" }),
    peer,
  );
  const older = h("div", { class: "older", id: "older-status" });
  const status = h("div", { class: "list-status" });
  const list = h("ol", { class: "messages", id: "messages", role: "log", "aria-live": "polite" });
  const scroller = h("div", { class: "scroller", id: "scroller" }, older, status, list);

  const input = h("textarea", {
    id: "composer-input",
    rows: 1,
    placeholder: "Write a message…",
    "aria-label": "Message",
    autocomplete: "off",
  });
  const counter = h("span", { class: "counter", "aria-live": "polite" });
  const sendBtn = h("button", { type: "submit", class: "primary", id: "send" }, "Send");
  const composer = h("form", { class: "composer", id: "composer" }, input, counter, sendBtn);
  const el = h("section", { class: "dm", id: "dm", "data-conv": id }, header, scroller, composer);

  const rows = new Map<string, HTMLLIElement>();
  let firstRender = true;
  let lastOldest = 0;

  const row = (e: Entry): HTMLLIElement => {
    let li = rows.get(e.key);
    if (!li) {
      li = h(
        "li",
        { class: `msg ${e.mine ? "mine" : "theirs"}` },
        h(
          "div",
          { class: "bubble" },
          e.mine ? null : h("span", { class: "author" }),
          h("p", { class: "text" }),
          h("div", { class: "meta" }, h("time", { class: "at" }), h("span", { class: "status" })),
        ),
      );
      rows.set(e.key, li);
    }
    const author = li.querySelector(".author");
    if (author) {
      setText(author, e.deleted ? "deleted account" : e.author);
      author.classList.toggle("deleted", e.deleted);
    }
    setText(li.querySelector(".text") as Element, e.text);
    setText(li.querySelector(".at") as Element, clock(e.at));
    li.dataset.state = e.state;
    if (e.seq !== null) li.dataset.seq = String(e.seq);
    li.dataset.cmid = e.clientMsgId;
    const st = li.querySelector(".status") as HTMLElement;
    if (e.state === "failed") {
      if (!st.querySelector("button")) {
        fill(
          st,
          h("span", { class: "failed-text" }),
          " ",
          h("button", { type: "button", class: "link retry", onclick: () => state.retry(id, e.clientMsgId) }, "Retry"),
          " ",
          h("button", { type: "button", class: "link discard", onclick: () => state.discard(id, e.clientMsgId) }, "Discard"),
        );
      }
      setText(st.querySelector(".failed-text") as Element, `not sent: ${e.error ?? "error"}`);
    } else {
      setText(st, e.state === "sending" ? "sending…" : e.state === "sent" ? "sent" : "");
    }
    return li;
  };

  const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < NEAR_BOTTOM_PX;
  const toBottom = () => {
    scroller.scrollTop = scroller.scrollHeight;
  };

  const render = () => {
    const c = state.convs.get(id);
    if (!c) {
      setText(peer, "");
      composer.hidden = true;
      if (state.convsState === "loading") fill(status, h("p", { class: "muted loading" }, "Loading…"));
      else
        fill(
          status,
          h("p", null, "This conversation is not in your list."),
          h("a", { href: "#/chats", class: "button" }, "Back to chats"),
        );
      return;
    }
    composer.hidden = false;
    setText(peer, c.summary.peer);
    setText(header.querySelector(".avatar") as Element, (c.summary.peer[0] ?? "?").toUpperCase());
    const t = c.timeline;
    const entries = state.entries(id);

    if (!t.loaded && !t.error && !entries.length) fill(status, h("p", { class: "muted loading" }, "Loading messages…"));
    else if (t.error && !entries.length)
      fill(
        status,
        h("p", { class: "form-error" }, `Could not load messages: ${t.error}`),
        h("button", { type: "button", onclick: () => void state.loadLatest(id) }, "Retry"),
      );
    else if (t.loaded && !entries.length)
      fill(status, h("div", { class: "empty" }, h("p", null, "No messages yet."), h("p", { class: "muted" }, "Say hello!")));
    else status.replaceChildren();

    if (t.loadingOlder) fill(older, h("span", { class: "muted loading" }, "Loading older messages…"));
    else if (t.olderError)
      fill(
        older,
        h("span", { class: "form-error" }, `Could not load older messages: ${t.olderError} `),
        h("button", { type: "button", class: "link", onclick: () => void state.loadOlder(id) }, "Retry"),
      );
    else if (t.loaded && !t.hasOlder && t.messages.length)
      fill(older, h("span", { class: "muted" }, "This is the beginning of your conversation."));
    else older.replaceChildren();

    // Keep the view where the reader is: pinned to the bottom for new messages, anchored when
    // older ones are prepended above.
    const wasAtBottom = atBottom();
    const prevHeight = scroller.scrollHeight;
    const prevTop = scroller.scrollTop;
    reconcile(list, entries.map(row));
    for (const key of rows.keys()) if (!entries.some((e) => e.key === key)) rows.delete(key);
    // Outside the document nothing can be measured or scrolled: the first render in it (queued
    // when the view is made) positions the view.
    if (!scroller.isConnected) return;
    const oldest = t.oldest;
    if (firstRender && t.loaded) {
      toBottom();
      firstRender = false;
    } else if (lastOldest && oldest < lastOldest) {
      scroller.scrollTop = prevTop + (scroller.scrollHeight - prevHeight);
    } else if (wasAtBottom) {
      toBottom();
    }
    lastOldest = oldest;
    // A first page shorter than the screen: fetch more until it scrolls (or history ends).
    if (t.loaded && t.hasOlder && !t.loadingOlder && !t.olderError && scroller.scrollHeight <= scroller.clientHeight + 8) {
      void state.loadOlder(id);
    }
  };

  scroller.addEventListener("scroll", () => {
    if (scroller.scrollTop < NEAR_TOP_PX) void state.loadOlder(id);
  });

  const updateComposer = () => {
    const n = utf8Length(input.value);
    const empty = input.value.trim() === "";
    sendBtn.disabled = empty || n > TEXT_MAX;
    setText(counter, n > TEXT_MAX - 500 ? `${n}/${TEXT_MAX}` : "");
    counter.classList.toggle("over", n > TEXT_MAX);
    autosize();
  };
  // Grow with the text up to the CSS max-height. Without text (and before the view is in the
  // document, where nothing can be measured) the textarea keeps its natural one-row height.
  const autosize = () => {
    input.style.height = "";
    if (!input.value || !input.isConnected || input.scrollHeight <= input.clientHeight) return;
    const borders = input.offsetHeight - input.clientHeight;
    input.style.height = `${input.scrollHeight + borders}px`;
  };
  input.addEventListener("input", updateComposer);
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const text = input.value;
    if (!text.trim() || utf8Length(text) > TEXT_MAX) return;
    state.send(id, text);
    input.value = "";
    updateComposer();
    toBottom();
    input.focus();
  });

  subs.add(state.on(`conv:${id}`, render));
  subs.add(state.on("convs", render));
  updateComposer();
  render();
  state.setOpen(id);
  queueMicrotask(() => {
    render();
    if (window.matchMedia("(pointer: fine)").matches) input.focus();
  });
  return {
    el,
    dispose: () => {
      subs.dispose();
      if (state.openId === id) state.setOpen(null);
    },
  };
}
