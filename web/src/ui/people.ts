// Invites and connections: my code (copy), invite by code, incoming invites (accept / decline,
// arriving live), my connections (message / remove), invites I sent.

import { describe } from "../api";
import { ago, fill, h } from "../dom";
import type { Link } from "../types";
import { Subs, type AppCtx, type View } from "./ctx";
import { confirmDialog } from "./dialog";

async function copyText(text: string, fallbackFrom: HTMLInputElement): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    fallbackFrom.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

export function peopleView(ctx: AppCtx): View {
  const { state } = ctx;
  const subs = new Subs();
  // --- my code
  const codeBox = h("input", { id: "my-code", readonly: true, value: state.me.invite_code ?? "", "aria-label": "Your invite code" });
  const copied = h("span", { class: "muted", role: "status" });
  const copyBtn = h("button", { type: "button", id: "copy-code" }, "Copy");
  copyBtn.addEventListener("click", async () => {
    copied.textContent = (await copyText(codeBox.value, codeBox)) ? "Copied" : "Select the code and copy it";
    setTimeout(() => (copied.textContent = ""), 3000);
  });
  const newCodeBtn = h("button", { type: "button", id: "new-code" }, "New code");
  newCodeBtn.addEventListener("click", () =>
    void confirmDialog({
      title: "Get a new invite code?",
      body: "Your current code stops working: anyone who has it can no longer invite you. People you are already connected with stay connected.",
      confirmLabel: "New code",
      action: async () => {
        codeBox.value = await state.rotateInviteCode();
        copied.textContent = "New code ready";
        setTimeout(() => (copied.textContent = ""), 3000);
      },
    }),
  );

  // --- invite by code
  const inviteInput = h("input", {
    id: "invite-code",
    placeholder: "Their invite code",
    autocomplete: "off",
    autocapitalize: "characters",
    spellcheck: "false",
    maxlength: 32,
    "aria-label": "Invite code",
  });
  const inviteBtn = h("button", { type: "submit", class: "primary", id: "invite-send" }, "Send invite");
  const inviteMsg = h("p", { class: "form-result", id: "invite-result", role: "status" });
  const inviteForm = h(
    "form",
    {
      class: "row-form",
      onsubmit: async (ev: Event) => {
        ev.preventDefault();
        const v = inviteInput.value.trim();
        if (!v) {
          inviteMsg.className = "form-result form-error";
          inviteMsg.textContent = "Enter the invite code someone gave you.";
          return;
        }
        inviteBtn.disabled = true;
        inviteMsg.className = "form-result muted";
        inviteMsg.textContent = "Sending…";
        try {
          const link = await state.invite(v);
          inviteMsg.className = "form-result ok";
          inviteMsg.textContent = `Invite sent to ${link.username}.`;
          inviteInput.value = "";
        } catch (e) {
          inviteMsg.className = "form-result form-error";
          inviteMsg.textContent = describe(e);
        } finally {
          inviteBtn.disabled = false;
        }
      },
    },
    inviteInput,
    inviteBtn,
  );

  const incoming = h("ul", { class: "people", id: "incoming" });
  const connections = h("ul", { class: "people", id: "connections" });
  const outgoing = h("ul", { class: "people", id: "outgoing" });
  const declined = h("ul", { class: "people", id: "declined" });
  const status = h("div", { class: "list-status" });
  const declinedSection = h("section", { class: "card" }, h("h3", null, "Declined"), declined);

  const busy = async (btn: HTMLButtonElement, row: HTMLElement, fn: () => Promise<unknown>) => {
    btn.disabled = true;
    const err = row.querySelector(".row-error");
    if (err) err.textContent = "";
    try {
      await fn();
    } catch (e) {
      if (err) err.textContent = describe(e);
      btn.disabled = false;
    }
  };

  const person = (l: Link, ...actions: (HTMLElement | string)[]) =>
    h(
      "li",
      { class: "person", "data-user": l.user_id },
      h("span", { class: "avatar", "aria-hidden": "true" }, (l.username[0] ?? "?").toUpperCase()),
      h("span", { class: "who" }, h("span", { class: "name" }, l.username), h("span", { class: "muted small" }, ago(l.updated_at_ms))),
      h("span", { class: "actions" }, ...actions),
      h("span", { class: "row-error form-error", role: "alert" }),
    );

  const empty = (ul: HTMLElement, text: string) => fill(ul, h("li", { class: "muted empty-row" }, text));

  const render = () => {
    if (state.linksState === "loading") fill(status, h("p", { class: "muted loading" }, "Loading your connections…"));
    else if (state.linksState === "error")
      fill(
        status,
        h("p", { class: "form-error" }, `Could not load connections: ${state.linksError}`),
        h("button", { type: "button", onclick: () => void state.loadLinks() }, "Retry"),
      );
    else status.replaceChildren();

    const inc = state.linksWhere((l) => l.direction === "incoming" && l.state === "pending");
    if (!inc.length) empty(incoming, "No invites waiting for you.");
    else
      fill(
        incoming,
        inc.map((l) => {
          const accept = h("button", { type: "button", class: "primary accept" }, "Accept");
          const reject = h("button", { type: "button", class: "reject" }, "Decline");
          const li = person(l, accept, reject);
          accept.addEventListener("click", () => busy(accept, li, () => state.respond(l.user_id, true)));
          reject.addEventListener("click", () => busy(reject, li, () => state.respond(l.user_id, false)));
          return li;
        }),
      );

    const acc = state.linksWhere((l) => l.state === "accepted");
    if (!acc.length) empty(connections, "No connections yet: share your code or invite someone by theirs.");
    else
      fill(
        connections,
        acc.map((l) => {
          const msg = h("button", { type: "button", class: "primary message" }, "Message");
          const rm = h("button", { type: "button", class: "link remove" }, "Remove");
          const li = person(l, msg, rm);
          msg.addEventListener("click", () =>
            busy(msg, li, async () => {
              const id = await state.openDm(l.user_id);
              ctx.navigate(`#/chats/${encodeURIComponent(id)}`);
            }),
          );
          rm.addEventListener("click", async () => {
            await confirmDialog({
              title: `Remove ${l.username}?`,
              body: "You will no longer be able to message each other until one of you invites the other again. Your conversation history is kept.",
              confirmLabel: "Remove",
              danger: true,
              action: () => state.removeConnection(l.user_id),
            });
          });
          return li;
        }),
      );

    const out = state.linksWhere((l) => l.direction === "outgoing" && l.state === "pending");
    if (!out.length) empty(outgoing, "No invites waiting for an answer.");
    else fill(outgoing, out.map((l) => person(l, h("span", { class: "muted" }, "waiting for an answer"))));

    const rej = state.linksWhere((l) => l.state === "rejected");
    declinedSection.hidden = !rej.length;
    fill(
      declined,
      rej.map((l) =>
        person(l, h("span", { class: "muted" }, l.direction === "incoming" ? "you declined" : "declined your invite")),
      ),
    );
  };

  const el = h(
    "section",
    { class: "page people-page", id: "people" },
    h("h2", null, "People"),
    h(
      "section",
      { class: "card" },
      h("h3", null, "Your invite code"),
      h("p", { class: "muted" }, "Give it to someone you want to chat with; they invite you with it."),
      h("div", { class: "row-form" }, codeBox, copyBtn, newCodeBtn),
      copied,
    ),
    h("section", { class: "card" }, h("h3", null, "Invite someone"), inviteForm, inviteMsg),
    status,
    h("section", { class: "card" }, h("h3", null, "Invites for you"), incoming),
    h("section", { class: "card" }, h("h3", null, "Connections"), connections),
    h("section", { class: "card" }, h("h3", null, "Invites you sent"), outgoing),
    declinedSection,
  );
  subs.add(state.on("links", render));
  render();
  return { el, dispose: () => subs.dispose() };
}
