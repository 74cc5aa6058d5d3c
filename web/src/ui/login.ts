// Log in / create an account. Mirrors the server's rules (topics/src/validate.rs) so most
// mistakes are explained before a round trip; the server's message is shown for the rest.

import { api, describe, type ApiError } from "../api";
import { h } from "../dom";
import { newClientMsgId } from "../state";
import type { ReplyOf } from "../types";

export interface LoginNotice {
  text: string;
  kind: "info" | "error";
}

/** The `client_request_id` of each sign-up: one id, kept while the username and password stay the
 * same, so that a retry after an error (a lost answer, a failed login right after) is the same
 * sign-up to the server, answered as the first was instead of "taken". */
export function signupIds(newId: () => string = newClientMsgId): (u: string, p: string) => string {
  let attempt: { u: string; p: string; id: string } | null = null;
  return (u, p) => {
    if (!attempt || attempt.u !== u || attempt.p !== p) attempt = { u, p, id: newId() };
    return attempt.id;
  };
}

export function usernameProblem(raw: string): string | null {
  const name = raw.trim().toLowerCase();
  if (name.length < 3 || name.length > 32) return "Usernames are 3–32 characters.";
  if (!/^[a-z]/.test(name)) return "Usernames start with a letter.";
  if (!/^[a-z0-9_.]+$/.test(name)) return "Usernames may hold only a–z, 0–9, _ and .";
  return null;
}

export function passwordProblem(pw: string): string | null {
  const n = Array.from(pw).length;
  if (n < 8 || n > 128) return "Passwords are 8–128 characters.";
  if (n < 12 && (/^[0-9]+$/.test(pw) || /^\p{L}+$/u.test(pw))) {
    return "Mix letters with digits or symbols (or use at least 12 characters).";
  }
  return null;
}

export function loginView(
  notice: LoginNotice | null,
  onSession: (s: ReplyOf<"session">) => void,
): HTMLElement {
  let mode: "login" | "signup" = "login";
  const user = h("input", {
    id: "username",
    name: "username",
    autocomplete: "username",
    autocapitalize: "none",
    spellcheck: "false",
    required: true,
    maxlength: 32,
  });
  const pass = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
    maxlength: 128,
  });
  const hint = h("p", { class: "hint", id: "form-hint" });
  const error = h("p", { class: "form-error", role: "alert", id: "login-error" });
  const submit = h("button", { type: "submit", class: "primary wide", id: "login-submit" }, "Log in");
  const title = h("h2", null, "Log in");
  const switchText = h("span", null, "New here?");
  const switchBtn = h("button", { type: "button", class: "link", id: "mode-switch" }, "Create an account");
  const noticeEl = notice
    ? h("p", { class: `notice ${notice.kind}`, role: "status", id: "login-notice" }, notice.text)
    : null;

  const render = () => {
    const signup = mode === "signup";
    title.textContent = signup ? "Create an account" : "Log in";
    submit.textContent = signup ? "Create account" : "Log in";
    switchText.textContent = signup ? "Have an account?" : "New here?";
    switchBtn.textContent = signup ? "Log in instead" : "Create an account";
    pass.setAttribute("autocomplete", signup ? "new-password" : "current-password");
    hint.textContent = signup
      ? "Username: 3–32 of a–z, 0–9, _ and ., starting with a letter. Password: 8+ characters, not only letters or only digits."
      : "";
    error.textContent = "";
  };

  const signupId = signupIds();

  const form = h(
    "form",
    {
      class: "card login-card",
      novalidate: true,
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        error.textContent = "";
        const u = user.value.trim();
        const p = pass.value;
        if (mode === "signup") {
          const problem = usernameProblem(u) ?? passwordProblem(p);
          if (problem) {
            error.textContent = problem;
            return;
          }
        } else if (!u || !p) {
          error.textContent = "Enter your username and password.";
          return;
        }
        submit.disabled = true;
        const label = submit.textContent ?? "";
        submit.textContent = mode === "signup" ? "Creating account…" : "Logging in…";
        try {
          if (mode === "signup") await api.signup(u, p, signupId(u, p));
          const s = await api.login(u, p);
          pass.value = "";
          onSession(s);
        } catch (e) {
          const code = (e as ApiError).code;
          error.textContent =
            code === "conflict" && mode === "signup" ? "That username is taken; pick another." : describe(e);
          submit.disabled = false;
          submit.textContent = label;
        }
      },
    },
    title,
    noticeEl,
    h("label", { for: "username" }, "Username"),
    user,
    h("label", { for: "password" }, "Password"),
    pass,
    hint,
    error,
    submit,
    h(
      "p",
      { class: "switch" },
      switchText,
      " ",
      switchBtn,
    ),
  );
  switchBtn.addEventListener("click", () => {
    mode = mode === "login" ? "signup" : "login";
    render();
    user.focus();
  });
  render();
  const view = h(
    "div",
    { class: "login-screen", id: "login" },
    h("div", { class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }, "☎"), h("h1", null, "Switchboard")),
    h("p", { class: "tagline" }, "Chat with the people you connect with."),
    form,
  );
  queueMicrotask(() => user.focus());
  return view;
}
