// What every signed-in view gets.

import type { Connection } from "../conn";
import type { ChatState } from "../state";

export interface AppCtx {
  state: ChatState;
  conn: Connection;
  navigate(hash: string): void;
  /** End the session on purpose: "this" device, "all" devices, or delete the account. */
  leave(how: "this" | "all" | "delete"): Promise<void>;
}

export interface View {
  el: HTMLElement;
  dispose(): void;
}

/** Subscriptions a view drops when it goes away. */
export class Subs {
  private offs: (() => void)[] = [];
  add(off: () => void): void {
    this.offs.push(off);
  }
  dispose(): void {
    for (const off of this.offs.splice(0)) off();
  }
}
