// The page's life: find out whether the cookie holds a session, show the login screen or the
// signed-in shell, keep the session alive while the page is open, and go back to the login
// screen with a message when the session ends (here, elsewhere, or by expiry).

import { api, ApiError, describe } from "../api";
import { Connection, type ConnStatus } from "../conn";
import { h } from "../dom";
import { ChatState, type Me } from "../state";
import type { ReplyOf } from "../types";
import type { AppCtx } from "./ctx";
import { loginView, type LoginNotice } from "./login";
import { parseRoute } from "../route";
import { Shell } from "./shell";

/** Refresh at a third of the idle timeout, within these bounds (seconds). */
const REFRESH_MIN_S = 20;
const REFRESH_MAX_S = 300;
const REFRESH_RETRY_S = 15;

interface Session {
  state: ChatState;
  conn: Connection;
  shell: Shell;
  keepAlive: ReturnType<typeof setTimeout> | undefined;
  cleanup: (() => void)[];
  /** Set while this page ends the session itself: the message the login screen shows. */
  leaving: string | null;
}

function meOf(r: ReplyOf<"user">): Me {
  return {
    user_id: r.user.user_id,
    username: r.user.username,
    // never null on the wire (the server leaves it out instead); the type allows what serde reads
    invite_code: r.invite_code ?? undefined,
    created_at_ms: r.user.created_at_ms,
  };
}

export class App {
  private session: Session | null = null;

  constructor(private readonly root: HTMLElement) {}

  private show(el: HTMLElement): void {
    this.root.replaceChildren(el);
  }

  async boot(): Promise<void> {
    this.show(h("div", { class: "splash", id: "splash" }, h("span", { class: "logo big" }, "☎"), h("p", null, "Loading…")));
    try {
      // `GET /sessions/current` answers 200 signed in or not: a first visit logs no failed request.
      const r = await api.currentSession();
      if (r.kind === "user") this.start(meOf(r), null);
      else this.login(null);
    } catch (e) {
      if (e instanceof ApiError && e.unauthorized) this.login(null);
      else this.fatal(describe(e));
    }
  }

  private fatal(message: string): void {
    const retry = h("button", { type: "button", class: "primary" }, "Try again");
    retry.addEventListener("click", () => void this.boot());
    this.show(
      h(
        "div",
        { class: "login-screen", id: "fatal" },
        h("div", { class: "card" }, h("h2", null, "Switchboard is not reachable"), h("p", { class: "form-error" }, message), retry),
      ),
    );
  }

  private login(notice: LoginNotice | null): void {
    if (location.hash && location.hash !== "#/") history.replaceState(null, "", location.pathname + location.search);
    this.show(loginView(notice, (s) => void this.afterLogin(s)));
  }

  private async afterLogin(s: ReplyOf<"session">): Promise<void> {
    try {
      this.start(meOf(await api.me()), s.idle_timeout_s);
    } catch (e) {
      this.login({ text: describe(e), kind: "error" });
    }
  }

  private start(me: Me, idleTimeoutS: number | null): void {
    const wsUrl = `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
    // eslint-disable-next-line prefer-const
    let session: Session;
    const conn = new Connection(wsUrl, {
      onEvent: (ev) => session.state.applyEvent(ev),
      onOpen: (reconnected) => void session.state.connected(reconnected),
      onStatus: (st: ConnStatus) => {
        session?.shell.setStatus(st);
        session?.state.emit("conn");
      },
      onRevoked: (reason) => this.end(session, { text: `You were signed out: ${reason}.`, kind: "info" }),
      checkSession: async () => {
        try {
          return (await api.currentSession()).kind === "user";
        } catch (e) {
          return !(e instanceof ApiError && e.unauthorized);
        }
      },
    });
    const state = new ChatState(me, conn);
    const ctx: AppCtx = {
      state,
      conn,
      navigate: (hash) => {
        if (location.hash === hash) session.shell.show(parseRoute(hash));
        else location.hash = hash;
      },
      leave: (how) => this.leave(session, how),
    };
    const shell = new Shell(ctx);
    session = { state, conn, shell, keepAlive: undefined, cleanup: [], leaving: null };
    this.session = session;

    const onHash = () => shell.show(parseRoute(location.hash));
    const onVisible = () => {
      state.setVisible(document.visibilityState === "visible");
      if (document.visibilityState === "visible") conn.retryNow();
    };
    window.addEventListener("hashchange", onHash);
    document.addEventListener("visibilitychange", onVisible);
    session.cleanup.push(
      () => window.removeEventListener("hashchange", onHash),
      () => document.removeEventListener("visibilitychange", onVisible),
    );
    state.visible = document.visibilityState === "visible";

    this.show(shell.el);
    shell.setStatus("connecting");
    shell.show(parseRoute(location.hash));
    conn.start();
    if (idleTimeoutS) this.scheduleRefresh(session, idleTimeoutS / 3);
    else void this.refresh(session);
  }

  // ------------------------------------------------------------------ keep-alive

  private scheduleRefresh(s: Session, seconds: number): void {
    clearTimeout(s.keepAlive);
    const wait = Math.min(REFRESH_MAX_S, Math.max(REFRESH_MIN_S, seconds));
    s.keepAlive = setTimeout(() => void this.refresh(s), wait * 1000);
  }

  /** HTTP refresh: extends the session's idle lifetime; the edge rotates the cookie. */
  private async refresh(s: Session): Promise<void> {
    if (this.session !== s) return;
    try {
      const r = await api.refresh();
      this.scheduleRefresh(s, r.idle_timeout_s / 3);
    } catch (e) {
      if (e instanceof ApiError && e.unauthorized) {
        this.end(s, { text: "Your session has expired. Log in again to continue.", kind: "info" });
      } else {
        this.scheduleRefresh(s, REFRESH_RETRY_S);
      }
    }
  }

  // ------------------------------------------------------------------ ending a session

  private async leave(s: Session, how: "this" | "all" | "delete"): Promise<void> {
    s.leaving =
      how === "this"
        ? "You have logged out."
        : how === "all"
          ? "You logged out on every device."
          : "Your account was deleted.";
    try {
      if (how === "this") await api.logout();
      else if (how === "all") await api.logoutEverywhere();
      else await api.deleteAccount();
    } catch (e) {
      if (!(e instanceof ApiError && e.unauthorized)) {
        s.leaving = null;
        throw e;
      }
    }
    this.end(s, { text: s.leaving ?? "You have logged out.", kind: "info" });
  }

  /** Tear the signed-in page down (once) and show the login screen with a message. */
  private end(s: Session, notice: LoginNotice): void {
    if (this.session !== s) return;
    this.session = null;
    clearTimeout(s.keepAlive);
    s.conn.stop();
    s.shell.dispose();
    for (const f of s.cleanup) f();
    document.querySelectorAll("dialog").forEach((d) => d.remove());
    document.title = "Switchboard";
    this.login(s.leaving ? { text: s.leaving, kind: "info" } : notice);
  }
}
