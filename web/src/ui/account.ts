// My account: profile, my sessions (end any other one), log out here or everywhere, delete the
// account (with confirmation).

import { api, describe } from "../api";
import { ago, fill, h } from "../dom";
import type { SessionInfo } from "../types";
import { Subs, type AppCtx, type View } from "./ctx";
import { confirmDialog } from "./dialog";

/** "5 December 2026", in the reader's locale. */
function memberSince(ms: number): string {
  return new Date(ms).toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric" });
}

export function accountView(ctx: AppCtx): View {
  const { state } = ctx;
  const subs = new Subs();
  const sessions = h("ul", { class: "sessions", id: "sessions" });
  const status = h("div", { class: "list-status" });
  const result = h("p", { class: "form-result form-error", role: "alert", id: "account-error" });
  let alive = true;

  const sessionRow = (s: SessionInfo) => {
    const end = s.current ? null : h("button", { type: "button", class: "link end-session" }, "Log out");
    end?.addEventListener("click", async () => {
      end.disabled = true;
      try {
        await api.logoutSession(s.session_id);
        await load();
      } catch (e) {
        end.disabled = false;
        result.textContent = describe(e);
      }
    });
    return h(
      "li",
      { class: `session${s.current ? " current" : ""}`, "data-session": s.session_id },
      h(
        "span",
        { class: "who" },
        h(
          "span",
          { class: "name" },
          h("span", { class: "device" }, s.device || "Unknown device"),
          s.current ? h("span", { class: "tag" }, "this device") : null,
        ),
        h(
          "span",
          { class: "muted small when-used" },
          `${s.current ? "active now" : `last active ${ago(s.last_seen_ms)}`} · signed in ${ago(s.created_at_ms)}`,
        ),
      ),
      h("span", { class: "actions" }, end),
    );
  };

  const load = async () => {
    fill(status, h("p", { class: "muted loading" }, "Loading sessions…"));
    try {
      const list = await api.sessions();
      if (!alive) return;
      list.sort((a, b) => Number(b.current) - Number(a.current) || b.last_seen_ms - a.last_seen_ms);
      fill(sessions, list.map(sessionRow));
      status.replaceChildren();
      if (!list.length) fill(status, h("p", { class: "muted" }, "No active sessions."));
    } catch (e) {
      if (!alive) return;
      fill(
        status,
        h("p", { class: "form-error" }, `Could not load sessions: ${describe(e)}`),
        h("button", { type: "button", onclick: () => void load() }, "Retry"),
      );
    }
  };

  const action = (label: string, id: string, how: "this" | "all", cls = "") => {
    const b = h("button", { type: "button", id, class: cls }, label);
    b.addEventListener("click", async () => {
      b.disabled = true;
      result.textContent = "";
      try {
        await ctx.leave(how);
      } catch (e) {
        b.disabled = false;
        result.textContent = describe(e);
      }
    });
    return b;
  };

  const del = h("button", { type: "button", class: "danger", id: "delete-account" }, "Delete my account…");
  del.addEventListener("click", () => {
    void confirmDialog({
      title: "Delete your account?",
      body: "Your sessions end, your connections and invites are removed, and you cannot log in again. Messages you sent stay in your contacts' conversations, shown as from a deleted account. This cannot be undone.",
      confirmLabel: "Delete account",
      danger: true,
      typeToConfirm: state.me.username,
      action: () => ctx.leave("delete"),
    });
  });

  const el = h(
    "section",
    { class: "page account-page", id: "account" },
    h("h2", null, "Account"),
    h(
      "section",
      { class: "card" },
      h("h3", null, "Profile"),
      h(
        "div",
        { class: "profile-head" },
        h("span", { class: "avatar", "aria-hidden": "true" }, (state.me.username[0] ?? "?").toUpperCase()),
        h(
          "div",
          null,
          h("p", { class: "profile-name", id: "me-username" }, state.me.username),
          state.me.created_at_ms
            ? h("p", { class: "muted small", id: "me-since" }, `Member since ${memberSince(state.me.created_at_ms)}`)
            : null,
        ),
      ),
      h(
        "dl",
        { class: "profile" },
        h("dt", null, "Invite code"),
        h(
          "dd",
          null,
          h("code", { id: "me-code" }, state.me.invite_code ?? "—"),
          " ",
          h("a", { href: "#/people", class: "small" }, "Share it from People"),
        ),
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("div", { class: "section-head" }, h("h3", null, "Your sessions"), h("button", { type: "button", class: "link", onclick: () => void load() }, "Refresh")),
      status,
      sessions,
      h(
        "div",
        { class: "actions-row" },
        action("Log out", "logout", "this"),
        action("Log out everywhere", "logout-all", "all"),
      ),
      result,
    ),
    h(
      "section",
      { class: "card danger-zone" },
      h("h3", null, "Danger zone"),
      h("p", { class: "muted" }, "Deleting your account is permanent."),
      del,
    ),
  );
  void load();
  return {
    el,
    dispose: () => {
      alive = false;
      subs.dispose();
    },
  };
}
