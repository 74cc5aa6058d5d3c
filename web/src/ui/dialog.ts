// A modal confirmation (native <dialog>), optionally asking the person to type a word first.

import { h } from "../dom";

export interface ConfirmOptions {
  title: string;
  body: string;
  confirmLabel: string;
  danger?: boolean;
  /** The confirm button stays disabled until this exact text is typed. */
  typeToConfirm?: string;
  /** Runs on confirm; a thrown error is shown in the dialog, which stays open. */
  action?: () => Promise<void>;
}

export function confirmDialog(o: ConfirmOptions): Promise<boolean> {
  return new Promise((resolve) => {
    const error = h("p", { class: "form-error", role: "alert" });
    const ok = h("button", { type: "submit", class: o.danger ? "danger" : "primary", id: "dialog-confirm" }, o.confirmLabel);
    const cancel = h("button", { type: "button", id: "dialog-cancel" }, "Cancel");
    const typed = o.typeToConfirm
      ? h("input", { id: "dialog-input", autocomplete: "off", autocapitalize: "none", spellcheck: "false" })
      : null;
    if (typed) ok.disabled = true;
    typed?.addEventListener("input", () => {
      ok.disabled = typed.value.trim() !== o.typeToConfirm;
    });
    let settled = false;
    const finish = (v: boolean) => {
      if (settled) return;
      settled = true;
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    const form = h(
      "form",
      {
        method: "dialog",
        onsubmit: async (ev: Event) => {
          ev.preventDefault();
          if (ok.disabled) return;
          if (o.action) {
            ok.disabled = cancel.disabled = true;
            error.textContent = "";
            try {
              await o.action();
            } catch (e) {
              error.textContent = e instanceof Error ? e.message : String(e);
              ok.disabled = cancel.disabled = false;
              return;
            }
          }
          finish(true);
        },
      },
      h("h2", null, o.title),
      h("p", null, o.body),
      typed
        ? h("label", { for: "dialog-input" }, "Type ", h("strong", null, o.typeToConfirm ?? ""), " to confirm")
        : null,
      typed,
      error,
      h("div", { class: "actions" }, cancel, ok),
    );
    const dlg = h("dialog", { class: "card dialog" }, form);
    cancel.addEventListener("click", () => finish(false));
    dlg.addEventListener("cancel", (ev) => {
      ev.preventDefault();
      if (!cancel.disabled) finish(false);
    });
    document.body.appendChild(dlg);
    dlg.showModal();
    (typed ?? cancel).focus();
  });
}
