// The page's WebSocket: same origin, cookie auth, subprotocol `switchboard.v1`. Requests carry a
// `rid` the reply echoes; events go to the app. When the socket drops it reconnects with
// exponential backoff and jitter (through whichever edge nginx picks), and tells the app so it
// can catch up. A heartbeat finds sockets that died without a close.

import { RequestError } from "./errors";
import type { Reply, Request, ServerEvent, ServerFrame } from "./types";

export type ConnStatus = "connecting" | "open" | "reconnecting" | "offline" | "stopped";

export interface ConnectionHooks {
  onEvent(ev: ServerEvent): void;
  /** The socket is open; `reconnected` after a drop. */
  onOpen(reconnected: boolean): void;
  onStatus(status: ConnStatus): void;
  /** The session ended (revoked or expired): no more reconnects. */
  onRevoked(reason: string): void;
  /** After a refused handshake: is the session still valid (false ends it)? */
  checkSession(): Promise<boolean>;
}

export interface ConnectionOptions {
  heartbeatMs: number;
  replyTimeoutMs: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
}

const DEFAULTS: ConnectionOptions = {
  heartbeatMs: 20_000,
  replyTimeoutMs: 15_000,
  backoffBaseMs: 500,
  backoffMaxMs: 15_000,
};

/** An open socket that lasted this long resets the backoff. */
const STABLE_MS = 5_000;

/** Close code of a revoked session (edge-ws close_code::REVOKED). */
export const CLOSE_REVOKED = 4001;

interface Waiting {
  resolve(r: Reply): void;
  reject(e: Error): void;
  timer: ReturnType<typeof setTimeout>;
}

/** Delay before reconnect attempt `attempt` (0-based): exponential, capped, with jitter. */
export function backoff(attempt: number, base: number, max: number, rnd: () => number = Math.random): number {
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 16));
  return Math.round(ceiling / 2 + (rnd() * ceiling) / 2);
}

export class Connection {
  status: ConnStatus = "connecting";
  /** Reconnect attempts since a socket last stayed open for STABLE_MS. */
  attempt = 0;
  /** When the next attempt starts (ms since epoch), while reconnecting. */
  retryAt = 0;
  private ws: WebSocket | null = null;
  private waiting = new Map<string, Waiting>();
  private rid = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private beatTimer: ReturnType<typeof setInterval> | undefined;
  private everOpened = false;
  private stopped = false;
  private lastIn = 0;
  private openedAt = 0;
  private readonly opts: ConnectionOptions;

  constructor(
    private readonly url: string,
    private readonly hooks: ConnectionHooks,
    opts: Partial<ConnectionOptions> = {},
  ) {
    this.opts = { ...DEFAULTS, ...opts };
  }

  start(): void {
    window.addEventListener("online", this.onOnline);
    window.addEventListener("offline", this.onOffline);
    this.connect();
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("offline", this.onOffline);
    clearTimeout(this.retryTimer);
    this.drop(1000, "bye");
    this.setStatus("stopped");
  }

  isOpen(): boolean {
    return this.status === "open" && this.ws?.readyState === WebSocket.OPEN;
  }

  /** Skip the backoff wait. */
  retryNow(): void {
    if (this.stopped || this.ws) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  request(frame: Request, timeoutMs = this.opts.replyTimeoutMs): Promise<Reply> {
    const ws = this.ws;
    if (!ws || !this.isOpen()) {
      return Promise.reject(new RequestError("offline", "not connected; reconnecting…"));
    }
    const rid = `r${++this.rid}`;
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(rid);
        reject(new RequestError("timeout", "the server did not answer in time; try again"));
      }, timeoutMs);
      this.waiting.set(rid, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ ...frame, rid }));
      } catch {
        clearTimeout(timer);
        this.waiting.delete(rid);
        reject(new RequestError("disconnected", "the connection dropped; reconnecting…"));
      }
    });
  }

  // ------------------------------------------------------------------ internals

  private setStatus(s: ConnStatus): void {
    if (this.status === s && s !== "reconnecting") return;
    this.status = s;
    this.hooks.onStatus(s);
  }

  private connect(): void {
    if (this.stopped) return;
    if (!navigator.onLine) {
      this.setStatus("offline");
      return;
    }
    this.setStatus(this.everOpened ? "reconnecting" : "connecting");
    let ws: WebSocket;
    try {
      ws = new WebSocket(this.url, ["switchboard.v1"]);
    } catch {
      this.scheduleRetry();
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      opened = true;
      this.openedAt = Date.now();
      this.lastIn = Date.now();
      const reconnected = this.everOpened;
      this.everOpened = true;
      this.setStatus("open");
      this.startHeartbeat();
      this.hooks.onOpen(reconnected);
    };
    ws.onmessage = (e: MessageEvent) => {
      if (this.ws !== ws) return;
      this.lastIn = Date.now();
      if (typeof e.data === "string") this.receive(e.data);
    };
    ws.onclose = (e: CloseEvent) => {
      if (this.ws !== ws) return;
      this.closed(e.code, e.reason, opened);
    };
  }

  /** Forget the current socket (closing it) and fail what waits on it. */
  private drop(code: number, reason: string): void {
    const ws = this.ws;
    this.ws = null;
    clearInterval(this.beatTimer);
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(code, reason);
      } catch {
        // already closing
      }
    }
    for (const [rid, w] of this.waiting) {
      clearTimeout(w.timer);
      w.reject(new RequestError("disconnected", "the connection dropped; reconnecting…"));
      this.waiting.delete(rid);
    }
  }

  private closed(code: number, reason: string, opened: boolean): void {
    this.drop(1000, "closed");
    if (this.stopped) return;
    if (code === CLOSE_REVOKED) {
      this.revoked(reason || "your session ended");
      return;
    }
    // A socket that lived a while starts the backoff over; one closed right after opening
    // (an edge shutting down, refusing, flapping) keeps backing off.
    if (opened && Date.now() - this.openedAt >= STABLE_MS) this.attempt = 0;
    if (!opened) {
      // The handshake was refused or the server is unreachable; a browser cannot tell which,
      // so ask the API whether the session is still good.
      this.setStatus(this.everOpened ? "reconnecting" : "connecting");
      void this.hooks.checkSession().then((valid) => {
        if (this.stopped) return;
        if (valid) this.scheduleRetry();
        else this.revoked("your session has expired");
      });
      return;
    }
    this.scheduleRetry();
  }

  private revoked(reason: string): void {
    this.stop();
    this.hooks.onRevoked(reason);
  }

  private scheduleRetry(): void {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    const delay = backoff(this.attempt, this.opts.backoffBaseMs, this.opts.backoffMaxMs);
    this.attempt += 1;
    this.retryAt = Date.now() + delay;
    this.setStatus(this.everOpened ? "reconnecting" : "connecting");
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }

  private receive(text: string): void {
    let f: ServerFrame;
    try {
      f = JSON.parse(text) as ServerFrame;
    } catch {
      return;
    }
    if (f.type === "event") {
      if (f.data.event === "session_revoked") {
        this.revoked(f.data.reason);
        return;
      }
      this.hooks.onEvent(f.data);
      return;
    }
    const w = f.rid ? this.waiting.get(f.rid) : undefined;
    if (!w || !f.rid) return;
    this.waiting.delete(f.rid);
    clearTimeout(w.timer);
    if (f.type === "reply") w.resolve(f.data);
    else w.reject(new RequestError(f.code, f.message));
  }

  /** A ping frame when nothing came in for a while; no pong in time means the socket is dead. */
  private startHeartbeat(): void {
    clearInterval(this.beatTimer);
    this.beatTimer = setInterval(() => {
      if (!this.isOpen() || Date.now() - this.lastIn < this.opts.heartbeatMs) return;
      this.request({ type: "ping" }, 10_000).catch((e: RequestError) => {
        if (e.code === "timeout" && this.isOpen()) this.closed(1006, "no pong", true);
      });
    }, this.opts.heartbeatMs / 2);
  }

  private onOffline = (): void => {
    if (this.stopped) return;
    clearTimeout(this.retryTimer);
    this.drop(1000, "offline");
    this.setStatus("offline");
  };

  private onOnline = (): void => {
    if (this.stopped || this.ws) return;
    this.attempt = 0;
    clearTimeout(this.retryTimer);
    this.connect();
  };
}
