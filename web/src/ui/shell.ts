// The signed-in frame: top bar, connection banner, tabs, the conversations list and the main
// area the route fills. Routes live in the URL hash (#/chats/<id>, #/people, …) so the back
// button and reloads work; ids in the hash are public ids, never secrets.

import type { ConnStatus } from "../conn";
import { fill, h, icon, setText } from "../dom";
import { type Page, type Route } from "../route";
import { accountView } from "./account";
import { chatList } from "./chats";
import { Subs, type AppCtx, type View } from "./ctx";
import { dmView } from "./dm";
import { lobbyView } from "./lobby";
import { onlineView } from "./online";
import { peopleView } from "./people";

export class Shell {
  readonly el: HTMLElement;
  private readonly main: HTMLElement;
  private readonly banner: HTMLElement;
  private readonly bannerText: HTMLElement;
  private readonly retryBtn: HTMLButtonElement;
  private readonly toasts: HTMLElement;
  private readonly dot: HTMLElement;
  private readonly tabs = new Map<Page, HTMLAnchorElement>();
  private readonly badges = new Map<Page, HTMLElement>();
  private readonly list: ReturnType<typeof chatList>;
  private readonly subs = new Subs();
  private view: View | null = null;
  private route: Route = { page: "chats", conv: null };
  private tick: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly ctx: AppCtx) {
    const { state } = ctx;
    this.dot = h("span", { class: "conn-dot", id: "conn-dot", title: "connecting" });
    this.bannerText = h("span", { id: "banner-text" });
    this.retryBtn = h("button", { type: "button", class: "link", id: "retry-now" }, "Retry now");
    this.retryBtn.addEventListener("click", () => ctx.conn.retryNow());
    this.banner = h("div", { class: "banner", id: "conn-banner", role: "status", hidden: true }, this.bannerText, " ", this.retryBtn);
    this.toasts = h("div", { class: "toasts", id: "toasts", "aria-live": "polite" });

    const tab = (page: Page, label: string) => {
      const badge = h("span", { class: "badge", hidden: true });
      const a = h(
        "a",
        { href: `#/${page}`, class: "tab", id: `tab-${page}`, "data-page": page },
        h("span", { class: "icon" }, icon(page)),
        h("span", { class: "label" }, label),
        badge,
      );
      this.tabs.set(page, a);
      this.badges.set(page, badge);
      return a;
    };
    const nav = h(
      "nav",
      { class: "tabs", "aria-label": "Sections" },
      tab("chats", "Chats"),
      tab("people", "People"),
      tab("online", "Online"),
      tab("lobby", "Lobby"),
      tab("account", "Account"),
    );
    this.list = chatList(ctx, () => this.route.conv);
    this.main = h("main", { class: "main", id: "main" });
    this.el = h(
      "div",
      { class: "shell", id: "shell" },
      h(
        "header",
        { class: "topbar" },
        h("span", { class: "logo", "aria-hidden": "true" }, "☎"),
        h("span", { class: "app-name" }, "Switchboard"),
        h("span", { class: "spacer" }),
        this.dot,
        h("span", { class: "me", id: "me" }, state.me.username),
      ),
      this.banner,
      h("div", { class: "layout" }, nav, h("aside", { class: "sidebar" }, this.list.el), this.main),
      this.toasts,
    );
    const badges = () => {
      this.badge("chats", state.totalUnread);
      this.badge("people", state.incomingInvites);
      const n = state.totalUnread;
      document.title = n ? `(${n}) Switchboard` : "Switchboard";
    };
    this.subs.add(state.on("convs", badges));
    this.subs.add(state.on("links", badges));
    this.subs.add(state.on("notice", () => this.showNotices()));
    // An invite's toast goes as soon as the invite is answered (here, on another device) or gone.
    this.subs.add(
      state.on("links", () => {
        for (const t of this.toasts.querySelectorAll<HTMLElement>(".toast[data-invite]")) {
          if (!state.invitePending(t.dataset.invite ?? "")) t.remove();
        }
      }),
    );
    badges();
  }

  private badge(page: Page, n: number): void {
    const b = this.badges.get(page);
    if (!b) return;
    setText(b, n > 99 ? "99+" : String(n));
    b.hidden = n === 0;
  }

  private showNotices(): void {
    for (const n of this.ctx.state.notices.splice(0)) {
      const t = h(
        "div",
        { class: `toast ${n.kind}`, role: n.kind === "error" ? "alert" : "status", title: "Dismiss" },
        n.text,
      );
      if (n.invite !== undefined) t.dataset.invite = n.invite;
      t.addEventListener("click", () => t.remove());
      this.toasts.appendChild(t);
      setTimeout(() => t.remove(), 6000);
    }
    this.placeToasts();
  }

  /** Toasts sit below the top bar, the connection banner and a conversation's header. */
  private placeToasts(): void {
    if (!this.toasts.childElementCount) return;
    let top = 0;
    for (const sel of [".topbar", "#conn-banner", ".dm-head"]) {
      const el = this.el.querySelector(sel);
      if (!el || (el as HTMLElement).hidden) continue;
      const r = el.getBoundingClientRect();
      if (r.height) top = Math.max(top, r.bottom);
    }
    this.toasts.style.top = `${Math.round(top) + 8}px`;
  }

  show(route: Route): void {
    const same = route.page === this.route.page && route.conv === this.route.conv && this.view;
    this.route = route;
    this.el.dataset.page = route.page;
    this.el.dataset.conv = route.conv ? "open" : "none";
    for (const [page, a] of this.tabs) {
      if (page === route.page) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    this.list.refresh();
    if (same) return;
    this.view?.dispose();
    this.view = null;
    switch (route.page) {
      case "chats":
        this.view = route.conv ? dmView(this.ctx, route.conv) : this.placeholder();
        break;
      case "people":
        this.view = peopleView(this.ctx);
        break;
      case "online":
        this.view = onlineView(this.ctx);
        break;
      case "lobby":
        this.view = lobbyView(this.ctx);
        break;
      case "account":
        this.view = accountView(this.ctx);
        break;
    }
    fill(this.main, this.view.el);
    this.placeToasts();
  }

  private placeholder(): View {
    return {
      el: h(
        "div",
        { class: "placeholder" },
        h("p", { class: "logo big", "aria-hidden": "true" }, "☎"),
        h("p", null, "Pick a conversation, or find people to talk to."),
      ),
      dispose: () => {},
    };
  }

  setStatus(s: ConnStatus): void {
    this.dot.dataset.status = s;
    this.dot.title = s;
    clearInterval(this.tick);
    const { conn, state } = this.ctx;
    const waiting = () => {
      const n = state.outboxSize;
      return n ? ` ${n} message${n === 1 ? "" : "s"} waiting to send.` : "";
    };
    const render = () => {
      if (s === "reconnecting" || (s === "connecting" && conn.attempt > 0)) {
        const secs = Math.max(0, Math.ceil((conn.retryAt - Date.now()) / 1000));
        setText(
          this.bannerText,
          `Connection lost — reconnecting…${secs > 0 ? ` (next try in ${secs} s)` : ""}${waiting()}`,
        );
        this.retryBtn.hidden = false;
      } else if (s === "offline") {
        setText(this.bannerText, `You are offline — reconnecting when the network is back…${waiting()}`);
        this.retryBtn.hidden = true;
      } else if (s === "connecting") {
        setText(this.bannerText, "Connecting…");
        this.retryBtn.hidden = true;
      }
    };
    this.banner.hidden = s === "open" || s === "stopped";
    this.banner.dataset.status = s;
    if (!this.banner.hidden) {
      render();
      this.tick = setInterval(render, 1000);
    }
    this.placeToasts();
  }

  dispose(): void {
    clearInterval(this.tick);
    this.view?.dispose();
    this.list.dispose();
    this.subs.dispose();
  }
}
