// Errors of WebSocket requests. `code` is the server's error code (topics::ErrorCode) or one of
// the page's own: "offline" (no open socket), "disconnected" (the socket closed before the
// reply), "timeout" (no reply in time), "bad_reply" (a reply of an unexpected kind).

export class RequestError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "RequestError";
  }

  /** The request may not have reached the server: sending it again later is the fix. */
  get transient(): boolean {
    return this.code === "offline" || this.code === "disconnected";
  }
}
