// The HTTP half of the protocol: sign-up, login, refresh, sessions, account. Every call asks for
// cookie-only sessions (`x-session-mode: cookie`), so the bearer token lives only in the HttpOnly
// `sb_session` cookie and never reaches page scripts.

import type { Reply, ReplyOf, SessionInfo } from "./types";

/** A failed call: `status` 0 means the server could not be reached at all. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "ApiError";
  }

  get unauthorized(): boolean {
    return this.status === 401 || this.code === "unauthorized";
  }
}

/** A sentence a person can act on, for any error thrown by a call. */
export function describe(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  if (e instanceof Error) return e.message;
  return String(e);
}

const UNAVAILABLE = "the server is not answering right now; try again in a moment";

async function call<T extends Reply>(method: string, path: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = { "x-session-mode": "cookie", accept: "application/json" };
  if (method === "POST") headers["content-type"] = "application/json";
  let resp: Response;
  try {
    resp = await fetch(`/api/v1${path}`, {
      method,
      headers,
      // The edge wants a Content-Length on every POST, even a body-less one.
      body: method === "POST" ? JSON.stringify(body ?? {}) : undefined,
      credentials: "same-origin",
      cache: "no-store",
    });
  } catch {
    throw new ApiError(0, "network", "cannot reach the server; check your connection");
  }
  const text = await resp.text();
  let data: unknown = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!resp.ok) {
    const d = data as { code?: string; message?: string } | null;
    if (d && typeof d.code === "string") {
      throw new ApiError(resp.status, d.code, d.message || d.code);
    }
    // nginx itself answered (no edge alive): not JSON.
    throw new ApiError(resp.status, "unavailable", resp.status >= 500 ? UNAVAILABLE : `HTTP ${resp.status}`);
  }
  return data as T;
}

export const api = {
  /** `requestId`: the same for every retry of one sign-up, so that a retry of one that went
   * through (its answer lost, or the login after it failed) is answered as it was, not "taken". */
  signup: (username: string, password: string, requestId: string) =>
    call<ReplyOf<"user">>("POST", "/users", { username, password, client_request_id: requestId }),
  login: (username: string, password: string) =>
    call<ReplyOf<"session">>("POST", "/sessions", { username, password }),
  /** Keep-alive: extends the session's idle lifetime; the edge rotates the cookie. */
  refresh: () => call<ReplyOf<"session">>("POST", "/sessions/refresh"),
  me: () => call<ReplyOf<"user">>("GET", "/users/me"),
  /** Who the cookie signs in, if anyone: answers 200 either way (no failed request on a first visit). */
  currentSession: () => call<ReplyOf<"user"> | ReplyOf<"signed_out">>("GET", "/sessions/current"),
  sessions: async (): Promise<SessionInfo[]> =>
    (await call<ReplyOf<"sessions">>("GET", "/sessions")).sessions,
  logout: () => call<ReplyOf<"ok">>("DELETE", "/sessions/current"),
  logoutSession: (id: string) => call<ReplyOf<"ok">>("DELETE", `/sessions/${encodeURIComponent(id)}`),
  logoutEverywhere: () => call<ReplyOf<"ok">>("DELETE", "/sessions"),
  deleteAccount: () => call<ReplyOf<"ok">>("DELETE", "/users/me"),
};
