// What the signed-in page knows and how it changes: conversations, their timelines and outboxes,
// invites and connections, the lobby. No DOM here: the views subscribe to topics, and a
// `Transport` (the WebSocket in the page, a fake in unit tests) carries the requests.

import { describe } from "./api";
import { RequestError } from "./errors";
import { Timeline } from "./timeline";
import type {
  BroadcastEvent,
  ConversationSummary,
  Id,
  Link,
  Message,
  OnlineUser,
  Reply,
  ReplyOf,
  Request,
  ServerEvent,
} from "./types";

export interface Transport {
  request(frame: Request, timeoutMs?: number): Promise<Reply>;
  isOpen(): boolean;
}

export interface Me {
  user_id: Id;
  username: string;
  invite_code?: string;
  /** When the account was made (absent in tests that do not care). */
  created_at_ms?: number;
}

export type SendState = "sending" | "failed";

/** A message typed here and not yet acknowledged by the server. */
export interface PendingSend {
  client_msg_id: string;
  text: string;
  state: SendState;
  error?: string;
  created_ms: number;
  inFlight: boolean;
  /**
   * Refused `out_of_order`: the message it named (typed before it) was not stored yet. It waits
   * while that one is in flight and goes again right behind it.
   */
  heldFor?: string;
}

export interface Conv {
  summary: ConversationSummary;
  timeline: Timeline;
  /** Oldest first. */
  pending: PendingSend[];
  /** Highest seq a dm.read was sent for. */
  readSent: number;
}

export type LoadState = "loading" | "ready" | "error";

export interface Notice {
  text: string;
  kind: "info" | "error";
  /** About this user's incoming invite: shown only while that invite is pending. */
  invite?: Id;
}

/** Topics views subscribe to. */
export type Topic = "convs" | "links" | "lobby" | "me" | "notice" | "conn" | `conv:${string}`;

const HISTORY_PAGE = 50;
const SEND_TIMEOUT_MS = 15_000;
const LOBBY_KEEP = 200;

/** A client message id: 128 random bits, hex. A retried send reuses it. */
export function newClientMsgId(): string {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class ChatState {
  readonly convs = new Map<Id, Conv>();
  convsState: LoadState = "loading";
  convsError = "";
  readonly links = new Map<Id, Link>();
  linksState: LoadState = "loading";
  linksError = "";
  readonly lobby: BroadcastEvent[] = [];
  /** The conversation on screen, if any. */
  openId: Id | null = null;
  /** Is the page visible (a message arriving in the open conversation is read at once)? */
  visible = true;
  notices: Notice[] = [];
  private listeners = new Map<string, Set<() => void>>();

  constructor(
    public me: Me,
    private transport: Transport,
  ) {}

  // ------------------------------------------------------------------ subscriptions

  on(topic: Topic, fn: () => void): () => void {
    let set = this.listeners.get(topic);
    if (!set) {
      set = new Set();
      this.listeners.set(topic, set);
    }
    set.add(fn);
    return () => set.delete(fn);
  }

  emit(topic: Topic): void {
    for (const fn of Array.from(this.listeners.get(topic) ?? [])) fn();
  }

  notify(text: string, kind: Notice["kind"] = "info", invite?: Id): void {
    this.notices.push(invite === undefined ? { text, kind } : { text, kind, invite });
    this.emit("notice");
  }

  /** Is this user's invite to me still waiting for my answer? */
  invitePending(userId: Id): boolean {
    const l = this.links.get(userId);
    return !!l && l.direction === "incoming" && l.state === "pending";
  }

  private async ask<K extends Reply["kind"]>(
    frame: Request,
    kind: K,
    timeoutMs?: number,
  ): Promise<ReplyOf<K>> {
    const r = await this.transport.request(frame, timeoutMs);
    if (r.kind !== kind) throw new RequestError("bad_reply", `unexpected reply ${r.kind} to ${frame.type}`);
    return r as ReplyOf<K>;
  }

  // ------------------------------------------------------------------ connection lifecycle

  /** The socket is open: (re)load lists, catch up open timelines, resend the outbox. */
  async connected(reconnect: boolean): Promise<void> {
    const jobs: Promise<unknown>[] = [this.loadConversations(), this.loadLinks()];
    if (reconnect) jobs.push(this.catchUp());
    await Promise.allSettled(jobs);
    this.flushOutbox();
    this.loadOpen();
    this.markReadIfOpen();
  }

  /** The conversation on screen needs its first page (after a reload or a failed load). */
  private loadOpen(): void {
    const c = this.openId ? this.convs.get(this.openId) : undefined;
    if (c && !c.timeline.loaded) void this.loadLatest(c.summary.conversation_id);
  }

  applyEvent(ev: ServerEvent): void {
    switch (ev.event) {
      case "dm_message":
        this.onMessage(ev.message);
        break;
      case "invite_updated":
        this.onLink(ev.link);
        break;
      case "connection_removed":
        this.onLinkRemoved(ev.user_id);
        break;
      case "broadcast":
        this.lobby.push(ev);
        if (this.lobby.length > LOBBY_KEEP) this.lobby.splice(0, this.lobby.length - LOBBY_KEEP);
        this.emit("lobby");
        break;
      case "session_revoked":
        break; // the connection handles it: the page goes back to the login screen
    }
  }

  // ------------------------------------------------------------------ conversations

  get totalUnread(): number {
    let n = 0;
    for (const c of this.convs.values()) n += c.summary.unread;
    return n;
  }

  /** Conversations, most recently active first. */
  sortedConvs(): Conv[] {
    const t = (c: Conv) => c.summary.last_message?.sent_at_ms ?? 0;
    return Array.from(this.convs.values()).sort((a, b) => t(b) - t(a) || b.summary.last_seq - a.summary.last_seq);
  }

  private upsertSummary(s: ConversationSummary): Conv {
    const c = this.convs.get(s.conversation_id);
    if (!c) {
      const conv: Conv = { summary: { ...s }, timeline: new Timeline(), pending: [], readSent: 0 };
      this.convs.set(s.conversation_id, conv);
      return conv;
    }
    // A list answer can be older than a live event already applied: never go backwards.
    if (s.last_seq >= c.summary.last_seq) c.summary = { ...s };
    return c;
  }

  async loadConversations(): Promise<void> {
    try {
      const r = await this.ask({ type: "dm.list" }, "conversations");
      for (const s of r.conversations) this.upsertSummary(s);
      this.convsState = "ready";
      this.convsError = "";
    } catch (e) {
      if (this.convsState !== "ready") this.convsState = "error";
      this.convsError = describe(e);
    }
    this.emit("convs");
    this.loadOpen();
    this.markReadIfOpen();
  }

  private isReading(id: Id): boolean {
    return this.openId === id && this.visible;
  }

  private onMessage(m: Message): void {
    const c = this.convs.get(m.conversation_id);
    if (!c) {
      // The first message of a conversation this page has not seen: the list brings it, with
      // its unread count.
      void this.loadConversations();
      return;
    }
    const s = c.summary;
    if (m.seq > s.last_seq) {
      s.last_seq = m.seq;
      s.last_message = m;
      if (m.author_id !== this.me.user_id && !this.isReading(s.conversation_id)) s.unread += 1;
    }
    const t = c.timeline;
    if (t.loaded || t.loading) {
      const from = t.contiguousNewest();
      const gap = t.gapBefore(m.seq);
      t.insert([m]);
      if (gap) void this.fetchAfter(c, from);
    }
    this.emit(`conv:${s.conversation_id}`);
    this.emit("convs");
    this.markReadIfOpen();
  }

  /** Fill a hole: everything after `seq`, page by page. */
  private async fetchAfter(c: Conv, seq: number): Promise<void> {
    const id = c.summary.conversation_id;
    try {
      for (let round = 0; round < 20; round++) {
        const r = await this.ask(
          { type: "dm.history", conversation_id: id, after_seq: seq, limit: 100 },
          "history",
        );
        c.timeline.insert(r.messages);
        this.emit(`conv:${id}`);
        if (!r.more || !r.messages.length) break;
        seq = r.messages[r.messages.length - 1].seq;
      }
    } catch {
      // the next reconnect catches up
    }
  }

  /** After a reconnect: what every loaded timeline missed, by sequence number (dm.sync). */
  async catchUp(): Promise<void> {
    let since: Record<Id, number> = {};
    for (const [id, c] of this.convs) {
      if (c.timeline.loaded) since[id] = c.timeline.contiguousNewest();
    }
    for (let round = 0; round < 50 && Object.keys(since).length; round++) {
      const next: Record<Id, number> = {};
      const ids = Object.keys(since);
      for (let i = 0; i < ids.length; i += 100) {
        const chunk: Record<Id, number> = {};
        for (const id of ids.slice(i, i + 100)) chunk[id] = since[id];
        const r = await this.ask({ type: "dm.sync", since: chunk }, "synced");
        for (const sc of r.conversations) {
          const c = this.convs.get(sc.conversation_id);
          if (!c) continue;
          c.timeline.insert(sc.messages);
          const last = sc.messages[sc.messages.length - 1];
          if (last && last.seq > c.summary.last_seq) {
            c.summary.last_seq = last.seq;
            c.summary.last_message = last;
          }
          if (sc.more && last) next[sc.conversation_id] = c.timeline.contiguousNewest();
          this.emit(`conv:${sc.conversation_id}`);
        }
      }
      since = next;
    }
    this.emit("convs");
  }

  /** The conversation on screen changed (null: none). */
  setOpen(id: Id | null): void {
    this.openId = id;
    if (id) void this.loadLatest(id);
    this.markReadIfOpen();
  }

  setVisible(v: boolean): void {
    this.visible = v;
    this.markReadIfOpen();
  }

  /** Tell the server the open conversation is read up to its newest message. */
  markReadIfOpen(): void {
    const id = this.openId;
    const c = id ? this.convs.get(id) : undefined;
    if (!c || !this.visible) return;
    const seq = Math.max(c.summary.last_seq, c.timeline.newest);
    if (c.summary.unread > 0) {
      c.summary.unread = 0;
      this.emit("convs");
    }
    if (seq > c.readSent && this.transport.isOpen()) {
      const before = c.readSent;
      c.readSent = seq;
      this.ask({ type: "dm.read", conversation_id: c.summary.conversation_id, seq }, "ok").catch(() => {
        if (c.readSent === seq) c.readSent = before; // sent again on the next chance
      });
    }
  }

  /** The latest page of a conversation, once. */
  async loadLatest(id: Id): Promise<void> {
    const c = this.convs.get(id);
    if (!c) return;
    const t = c.timeline;
    if (t.loaded || t.loading || !this.transport.isOpen()) return; // connected() loads it
    t.loading = true;
    t.error = null;
    this.emit(`conv:${id}`);
    try {
      const r = await this.ask({ type: "dm.history", conversation_id: id, limit: HISTORY_PAGE }, "history");
      t.insert(r.messages);
      t.hasOlder = r.more;
      t.loaded = true;
    } catch (e) {
      t.error = describe(e);
    } finally {
      t.loading = false;
    }
    this.emit(`conv:${id}`);
    this.markReadIfOpen();
  }

  /** The page before the oldest message held (dm.history with before_seq). */
  async loadOlder(id: Id): Promise<void> {
    const c = this.convs.get(id);
    if (!c) return;
    const t = c.timeline;
    if (!t.loaded || !t.hasOlder || t.loadingOlder || !t.messages.length) return;
    t.loadingOlder = true;
    t.olderError = null;
    this.emit(`conv:${id}`);
    try {
      const r = await this.ask(
        { type: "dm.history", conversation_id: id, before_seq: t.oldest, limit: HISTORY_PAGE },
        "history",
      );
      t.insert(r.messages);
      t.hasOlder = r.more;
    } catch (e) {
      t.olderError = describe(e);
    } finally {
      t.loadingOlder = false;
    }
    this.emit(`conv:${id}`);
  }

  /** Open (idempotently) the conversation with a connection; its id. */
  async openDm(userId: Id): Promise<Id> {
    const r = await this.ask({ type: "dm.open", user_id: userId }, "conversation");
    this.upsertSummary(r.conversation);
    this.emit("convs");
    return r.conversation.conversation_id;
  }

  // ------------------------------------------------------------------ sending

  /** Queue a message: shown at once as "sending…", "sent" when the server acknowledges it. */
  send(id: Id, text: string): PendingSend | null {
    const c = this.convs.get(id);
    if (!c) return null;
    const p: PendingSend = {
      client_msg_id: newClientMsgId(),
      text,
      state: "sending",
      created_ms: Date.now(),
      inFlight: false,
    };
    c.pending.push(p);
    this.emit(`conv:${id}`);
    void this.transmit(c, p);
    return p;
  }

  /** Send a failed message again, with the same client message id (never stored twice). */
  retry(id: Id, clientMsgId: string): void {
    const c = this.convs.get(id);
    const p = c?.pending.find((x) => x.client_msg_id === clientMsgId);
    if (!c || !p) return;
    p.state = "sending";
    p.error = undefined;
    this.emit(`conv:${id}`);
    void this.transmit(c, p);
  }

  discard(id: Id, clientMsgId: string): void {
    const c = this.convs.get(id);
    if (!c) return;
    c.pending = c.pending.filter((x) => x.client_msg_id !== clientMsgId || x.inFlight);
    this.emit(`conv:${id}`);
  }

  /** Resend what is waiting (after a reconnect). */
  flushOutbox(): void {
    for (const c of this.convs.values()) {
      for (const p of c.pending) {
        if (p.state === "sending" && !p.inFlight) void this.transmit(c, p);
      }
    }
  }

  get outboxSize(): number {
    let n = 0;
    for (const c of this.convs.values()) n += c.pending.length;
    return n;
  }

  /**
   * The message typed before `p` here that is still being sent: the server stores `p` only
   * after it, so a resent message never lands behind a later one. Failed messages are out of
   * the chain (the user retries them by hand; they land last).
   */
  private sendsAfter(c: Conv, p: PendingSend): string | undefined {
    const i = c.pending.indexOf(p);
    for (let j = i - 1; j >= 0; j--) {
      if (c.pending[j].state === "sending") return c.pending[j].client_msg_id;
    }
    return undefined;
  }

  private async transmit(c: Conv, p: PendingSend): Promise<void> {
    if (p.inFlight || !this.transport.isOpen()) return; // flushOutbox sends it once connected
    const waitsFor = p.heldFor;
    if (waitsFor && c.pending.some((x) => x.client_msg_id === waitsFor && x.inFlight)) return; // released when it settles
    p.heldFor = undefined;
    const id = c.summary.conversation_id;
    const after = this.sendsAfter(c, p);
    p.inFlight = true;
    try {
      const r = await this.ask(
        {
          type: "dm.send",
          conversation_id: id,
          client_msg_id: p.client_msg_id,
          text: p.text,
          ...(after ? { after_client_msg_id: after } : {}),
        },
        "sent",
        SEND_TIMEOUT_MS,
      );
      c.pending = c.pending.filter((x) => x !== p);
      const m = r.message;
      if (c.timeline.loaded || c.timeline.loading) c.timeline.insert([m]);
      if (m.seq > c.summary.last_seq) {
        c.summary.last_seq = m.seq;
        c.summary.last_message = m;
      }
      this.emit("convs");
    } catch (e) {
      if (e instanceof RequestError && e.code === "out_of_order") {
        p.heldFor = after; // the one before it is not stored yet: goes again right behind it
      } else if (e instanceof RequestError && e.transient) {
        p.state = "sending"; // the socket went away: resent with the same id after the reconnect
      } else {
        p.state = "failed";
        p.error = describe(e);
      }
    } finally {
      p.inFlight = false;
    }
    this.emit(`conv:${id}`);
    // The socket may have come back while this was in flight: nothing waits for a second flush.
    if (p.state === "sending" && c.pending.includes(p) && this.transport.isOpen()) void this.transmit(c, p);
    // Messages refused because this one was not stored go now, behind it (or its resend).
    for (const q of c.pending) {
      if (q.heldFor === p.client_msg_id) {
        q.heldFor = undefined;
        void this.transmit(c, q);
      }
    }
  }

  /**
   * What a conversation view shows: its messages, each with its send state when it is one of
   * mine not yet acknowledged, then the messages typed here the server has not stored yet.
   */
  entries(id: Id): Entry[] {
    const c = this.convs.get(id);
    if (!c) return [];
    const waiting = new Map(c.pending.map((p) => [p.client_msg_id, p]));
    const out: Entry[] = [];
    const shown = new Set<string>();
    for (const m of c.timeline.messages) {
      const mine = m.author_id === this.me.user_id;
      const p = mine ? waiting.get(m.client_msg_id) : undefined;
      if (p) shown.add(p.client_msg_id);
      out.push({
        // mine are keyed by client message id: the "sending…" entry becomes the "sent" one
        key: mine ? `c${m.client_msg_id}` : `s${m.seq}`,
        mine,
        author: m.author,
        deleted: m.author_id === null,
        text: m.text,
        at: m.sent_at_ms,
        seq: m.seq,
        state: p ? p.state : mine ? "sent" : "received",
        clientMsgId: m.client_msg_id,
      });
    }
    for (const p of c.pending) {
      if (shown.has(p.client_msg_id)) continue;
      out.push({
        key: `c${p.client_msg_id}`,
        mine: true,
        author: this.me.username,
        deleted: false,
        text: p.text,
        at: p.created_ms,
        seq: null,
        state: p.state,
        error: p.error,
        clientMsgId: p.client_msg_id,
      });
    }
    return out;
  }

  // ------------------------------------------------------------------ invites and connections

  private onLink(l: Link): void {
    const prev = this.links.get(l.user_id);
    this.links.set(l.user_id, l);
    this.emit("links");
    if (prev && prev.state === l.state && prev.direction === l.direction) return;
    if (l.direction === "incoming" && l.state === "pending") this.notify(`${l.username} invited you to connect`, "info", l.user_id);
    if (l.direction === "outgoing" && l.state === "accepted") this.notify(`${l.username} accepted your invite`);
    if (l.direction === "outgoing" && l.state === "rejected") this.notify(`${l.username} declined your invite`);
  }

  /** The other user (or my other device) removed the link: sends to them are refused now. */
  private onLinkRemoved(userId: Id): void {
    const prev = this.links.get(userId);
    if (!prev) return;
    this.links.delete(userId);
    this.emit("links");
    if (prev.state === "accepted") this.notify(`You are no longer connected with ${prev.username}`);
  }

  async loadLinks(): Promise<void> {
    try {
      const r = await this.ask({ type: "invite.list" }, "links");
      this.links.clear();
      for (const l of r.links) this.links.set(l.user_id, l);
      this.linksState = "ready";
      this.linksError = "";
    } catch (e) {
      if (this.linksState !== "ready") this.linksState = "error";
      this.linksError = describe(e);
    }
    this.emit("links");
  }

  linksWhere(pred: (l: Link) => boolean): Link[] {
    return Array.from(this.links.values())
      .filter(pred)
      .sort((a, b) => b.updated_at_ms - a.updated_at_ms);
  }

  get incomingInvites(): number {
    return this.linksWhere((l) => l.direction === "incoming" && l.state === "pending").length;
  }

  /** A fresh invite code for me; the old one stops working. */
  async rotateInviteCode(): Promise<string> {
    const r = await this.ask({ type: "user.rotate_invite_code" }, "user");
    this.me.invite_code = r.invite_code ?? undefined;
    this.emit("me");
    return this.me.invite_code ?? "";
  }

  async invite(code: string): Promise<Link> {
    const r = await this.ask({ type: "invite.send", code: code.trim() }, "link");
    this.links.set(r.link.user_id, r.link);
    this.emit("links");
    return r.link;
  }

  async respond(userId: Id, accept: boolean): Promise<Link> {
    const r = await this.ask({ type: "invite.respond", user_id: userId, accept }, "link");
    this.links.set(r.link.user_id, r.link);
    this.emit("links");
    return r.link;
  }

  async removeConnection(userId: Id): Promise<void> {
    await this.ask({ type: "connection.remove", user_id: userId }, "ok");
    this.links.delete(userId);
    this.emit("links");
  }

  // ------------------------------------------------------------------ lobby and presence

  async broadcast(text: string): Promise<void> {
    await this.ask({ type: "broadcast.send", text }, "ok");
  }

  async online(cursor: string | null, limit = 25): Promise<{ users: OnlineUser[]; next: string | null }> {
    const r = await this.ask({ type: "online.list", limit, ...(cursor ? { cursor } : {}) }, "online");
    return { users: r.users, next: r.next_cursor };
  }
}

export interface Entry {
  key: string;
  mine: boolean;
  author: string;
  deleted: boolean;
  text: string;
  at: number;
  seq: number | null;
  state: SendState | "sent" | "received";
  error?: string;
  clientMsgId: string;
}
