// Where the signed-in page is: the URL hash (#/chats/<id>, #/people, …), so the back button and
// reloads work. Conversation ids in the hash are public ids, never secrets.

import type { Id } from "./types";

export type Page = "chats" | "people" | "online" | "lobby" | "account";
export interface Route {
  page: Page;
  conv: Id | null;
}

const PAGES: Page[] = ["chats", "people", "online", "lobby", "account"];

function decode(part: string): string {
  try {
    return decodeURIComponent(part);
  } catch {
    return part; // a malformed escape: kept as typed (it matches no route)
  }
}

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decode);
  const page = (PAGES as string[]).includes(parts[0] ?? "") ? (parts[0] as Page) : "chats";
  const conv = page === "chats" && parts[1] && /^[0-9]{1,20}$/.test(parts[1]) ? parts[1] : null;
  return { page, conv };
}
