import { beforeEach, describe, expect, it } from "vitest";
import { RequestError } from "./errors";
import { ChatState, type Transport } from "./state";
import { msg } from "./test-helpers";
import type { ConversationSummary, Message, Reply } from "./types";

type Frame = Record<string, unknown>;

/** A transport whose replies the test writes; it records every frame. */
class FakeTransport implements Transport {
  open = true;
  frames: Frame[] = [];
  handler: (f: Frame) => Reply | Promise<Reply> = () => ({ kind: "ok" });

  request(frame: Frame): Promise<Reply> {
    if (!this.open) return Promise.reject(new RequestError("offline", "not connected"));
    this.frames.push(frame);
    return Promise.resolve().then(() => this.handler(frame));
  }

  isOpen(): boolean {
    return this.open;
  }

  of(type: string): Frame[] {
    return this.frames.filter((f) => f.type === type);
  }
}

const ME = { user_id: "1", username: "ann" };
const PEER = "2";

function summary(over: Partial<ConversationSummary> = {}): ConversationSummary {
  return { conversation_id: "9", peer_id: PEER, peer: "bob", last_seq: 0, last_message: null, unread: 0, ...over };
}

const fromBob = (seq: number, text = `m${seq}`): Message =>
  msg(seq, { author_id: PEER, author: "bob", client_msg_id: `b${seq}`, text });

const flush = () => new Promise((r) => setTimeout(r, 0));

/** Replies like a server holding `stored` in conversation 9. */
function server(t: FakeTransport, stored: Message[], conv = summary()) {
  t.handler = (f) => {
    switch (f.type) {
      case "dm.list":
        return { kind: "conversations", conversations: [{ ...conv, last_seq: stored.length }] };
      case "invite.list":
        return { kind: "links", links: [] };
      case "dm.history": {
        let ms = stored;
        if (typeof f.after_seq === "number") ms = ms.filter((m) => m.seq > (f.after_seq as number));
        if (typeof f.before_seq === "number") ms = ms.filter((m) => m.seq < (f.before_seq as number)).slice(-2);
        else if (f.after_seq === undefined) ms = ms.slice(-2);
        return { kind: "history", conversation_id: "9", messages: ms, more: ms.length > 0 && ms[0].seq > 1 && f.after_seq === undefined };
      }
      case "dm.sync": {
        const since = f.since as Record<string, number>;
        const rest = stored.filter((m) => m.seq > since["9"]);
        return { kind: "synced", conversations: [{ conversation_id: "9", messages: rest.slice(0, 2), more: rest.length > 2 }] };
      }
      case "dm.send": {
        const existing = stored.find((m) => m.client_msg_id === f.client_msg_id && m.author_id === ME.user_id);
        if (existing) return { kind: "sent", message: existing, duplicate: true };
        const after = f.after_client_msg_id;
        if (after !== undefined && !stored.some((m) => m.client_msg_id === after && m.author_id === ME.user_id)) {
          throw new RequestError("out_of_order", `the message typed before this one (${String(after)}) is not stored yet`);
        }
        const m = msg(stored.length + 1, { client_msg_id: f.client_msg_id as string, text: f.text as string });
        stored.push(m);
        return { kind: "sent", message: m, duplicate: false };
      }
      default:
        return { kind: "ok" };
    }
  };
}

describe("ChatState", () => {
  let t: FakeTransport;
  let s: ChatState;
  beforeEach(() => {
    t = new FakeTransport();
    s = new ChatState({ ...ME }, t);
  });

  it("counts a live message once however often it arrives, and not my own", async () => {
    server(t, []);
    await s.connected(false);
    s.applyEvent({ event: "dm_message", message: fromBob(1) });
    s.applyEvent({ event: "dm_message", message: fromBob(1) });
    s.applyEvent({ event: "dm_message", message: msg(2) });
    const c = s.convs.get("9")!;
    expect(c.summary.unread).toBe(1);
    expect(c.summary.last_seq).toBe(2);
    expect(s.totalUnread).toBe(1);
  });

  it("loads a conversation unknown to the list when its first message arrives", async () => {
    t.handler = (f) =>
      f.type === "dm.list" ? { kind: "conversations", conversations: [summary({ last_seq: 1, unread: 1 })] } : { kind: "ok" };
    s.applyEvent({ event: "dm_message", message: fromBob(1) });
    await flush();
    expect(t.of("dm.list")).toHaveLength(1);
    expect(s.convs.get("9")?.summary.unread).toBe(1);
  });

  it("marks the open conversation read up to its newest message", async () => {
    const stored = [fromBob(1), fromBob(2)];
    server(t, stored);
    await s.connected(false);
    s.setOpen("9");
    await flush();
    await flush();
    expect(t.of("dm.read").at(-1)).toMatchObject({ conversation_id: "9", seq: 2 });
    expect(s.convs.get("9")!.summary.unread).toBe(0);
    s.applyEvent({ event: "dm_message", message: fromBob(3) });
    expect(s.convs.get("9")!.summary.unread).toBe(0);
    expect(t.of("dm.read").at(-1)).toMatchObject({ seq: 3 });
  });

  it("does not count messages read while the page is hidden as read", async () => {
    server(t, [fromBob(1)]);
    await s.connected(false);
    s.setOpen("9");
    await flush();
    s.setVisible(false);
    s.applyEvent({ event: "dm_message", message: fromBob(2) });
    expect(s.convs.get("9")!.summary.unread).toBe(1);
    s.setVisible(true);
    expect(s.convs.get("9")!.summary.unread).toBe(0);
  });

  it("catches up after a reconnect with dm.sync, page by page, without duplicates", async () => {
    const stored = [fromBob(1), fromBob(2)];
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    expect(s.convs.get("9")!.timeline.messages.map((m) => m.seq)).toEqual([1, 2]);
    // offline: five more are stored; one of them also arrives late as a live event
    t.open = false;
    stored.push(fromBob(3), fromBob(4), fromBob(5), fromBob(6), fromBob(7));
    s.applyEvent({ event: "dm_message", message: fromBob(4) }); // a hole: 3 is missing
    await flush();
    expect(s.convs.get("9")!.timeline.messages.map((m) => m.seq)).toEqual([1, 2, 4]);
    t.open = true;
    await s.connected(true);
    const seqs = s.convs.get("9")!.timeline.messages.map((m) => m.seq);
    expect(seqs).toEqual([1, 2, 3, 4, 5, 6, 7]);
    const syncs = t.of("dm.sync").map((f) => (f.since as Record<string, number>)["9"]);
    expect(syncs[0]).toBeLessThanOrEqual(2); // from the end of the unbroken run, not from 4
    expect(syncs.length).toBeGreaterThan(1); // `more` was followed
  });

  it("fills a hole in live delivery from history", async () => {
    const stored = [fromBob(1), fromBob(2)];
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    stored.push(fromBob(3), fromBob(4));
    s.applyEvent({ event: "dm_message", message: fromBob(4) });
    await flush();
    await flush();
    expect(t.of("dm.history").at(-1)).toMatchObject({ after_seq: 2 });
    expect(s.convs.get("9")!.timeline.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4]);
  });

  it("loads older pages with before_seq until there are no more", async () => {
    const stored = [1, 2, 3, 4, 5].map((n) => fromBob(n));
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    const tl = s.convs.get("9")!.timeline;
    expect(tl.messages.map((m) => m.seq)).toEqual([4, 5]);
    expect(tl.hasOlder).toBe(true);
    await s.loadOlder("9");
    expect(t.of("dm.history").at(-1)).toMatchObject({ before_seq: 4 });
    await s.loadOlder("9");
    expect(tl.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(tl.hasOlder).toBe(false);
    await s.loadOlder("9");
    expect(t.of("dm.history")).toHaveLength(3);
  });

  it("shows a send as sending until the server acknowledges it, then sent", async () => {
    const stored: Message[] = [];
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    let release!: () => void;
    const inner = t.handler;
    t.handler = (f) =>
      f.type === "dm.send" ? new Promise<Reply>((r) => (release = () => r(inner(f) as Reply))) : inner(f);
    const p = s.send("9", "hello")!;
    await flush();
    expect(s.entries("9").map((e) => [e.text, e.state])).toEqual([["hello", "sending"]]);
    // my own message comes back as an event before the reply: still "sending"
    s.applyEvent({ event: "dm_message", message: msg(1, { client_msg_id: p.client_msg_id, text: "hello" }) });
    expect(s.entries("9").map((e) => [e.text, e.state, e.key])).toEqual([["hello", "sending", `c${p.client_msg_id}`]]);
    release();
    await flush();
    await flush();
    expect(s.entries("9").map((e) => [e.text, e.state, e.seq])).toEqual([["hello", "sent", 1]]);
    expect(s.outboxSize).toBe(0);
  });

  it("keeps sends typed offline and sends them once, with the same id, after reconnecting", async () => {
    const stored: Message[] = [];
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    t.open = false;
    s.send("9", "one");
    s.send("9", "two");
    await flush();
    expect(t.of("dm.send")).toHaveLength(0);
    expect(s.entries("9").map((e) => e.state)).toEqual(["sending", "sending"]);
    t.open = true;
    await s.connected(true);
    await flush();
    await flush();
    expect(t.of("dm.send").map((f) => f.text)).toEqual(["one", "two"]);
    expect(s.entries("9").map((e) => [e.text, e.state])).toEqual([
      ["one", "sent"],
      ["two", "sent"],
    ]);
  });

  it("resends with the same client message id when the socket drops mid-send", async () => {
    const stored: Message[] = [];
    server(t, stored);
    await s.connected(false);
    await s.loadLatest("9");
    const inner = t.handler;
    let drops = 1;
    t.handler = (f) => {
      if (f.type === "dm.send" && drops-- > 0) {
        inner(f); // stored, but the reply is lost with the socket
        t.open = false;
        throw new RequestError("disconnected", "dropped");
      }
      return inner(f);
    };
    s.send("9", "once");
    await flush();
    await flush();
    expect(s.entries("9").map((e) => e.state)).toEqual(["sending"]);
    t.open = true;
    s.flushOutbox();
    await flush();
    await flush();
    const sends = t.of("dm.send");
    expect(sends).toHaveLength(2);
    expect(sends[0].client_msg_id).toBe(sends[1].client_msg_id);
    expect(stored).toHaveLength(1);
    expect(s.entries("9").map((e) => [e.text, e.state])).toEqual([["once", "sent"]]);
  });

  /**
   * A server holding `stored` that gets the first `dm.send` only when the returned function is
   * called, after the ones written behind it; `late` says what becomes of it then.
   */
  async function holdFirstSend(stored: Message[], late: (f: Frame, inner: (f: Frame) => Promise<Reply>) => Promise<Reply>) {
    server(t, stored);
    await s.connected(false);
    const inner = t.handler;
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let first = true;
    t.handler = (f) => {
      if (f.type === "dm.send" && first) {
        first = false;
        return held.then(() => late(f, async (g) => inner(g)));
      }
      return inner(f);
    };
    return release;
  }

  it("keeps the typed order when a later message reaches the server before an earlier one", async () => {
    const stored: Message[] = [];
    const release = await holdFirstSend(stored, (f, inner) => inner(f));
    s.send("9", "one");
    s.send("9", "two");
    await flush();
    await flush();
    expect(stored).toHaveLength(0); // "two" was refused: "one" is not stored yet
    expect(s.entries("9").map((e) => [e.text, e.state])).toEqual([["one", "sending"], ["two", "sending"]]);
    release();
    await flush();
    await flush();
    await flush();
    expect(stored.map((m) => m.text)).toEqual(["one", "two"]);
    const sends = t.of("dm.send").map((f) => [f.text, f.after_client_msg_id]);
    const one = t.of("dm.send")[0].client_msg_id;
    expect(sends).toEqual([["one", undefined], ["two", one], ["two", undefined]]);
    expect(s.outboxSize).toBe(0);
  });

  it("leaves a failed message out of the chain: the next one goes without it", async () => {
    const stored: Message[] = [];
    const release = await holdFirstSend(stored, async () => {
      throw new RequestError("unavailable", "a database shard this request needs is unavailable; retry");
    });
    s.send("9", "one");
    s.send("9", "two");
    await flush();
    await flush();
    release();
    await flush();
    await flush();
    await flush();
    expect(stored.map((m) => m.text)).toEqual(["two"]);
    expect(s.entries("9").map((e) => [e.text, e.state])).toEqual([["one", "failed"]]);
    expect(t.of("dm.send").map((f) => [f.text, f.after_client_msg_id === undefined])).toEqual([
      ["one", true],
      ["two", false], // named "one", which was not stored: refused, then sent again without it
      ["two", true],
    ]);
  });

  it("marks a refused send failed; retry reuses its id", async () => {
    server(t, []);
    await s.connected(false);
    const inner = t.handler;
    let refuse = true;
    t.handler = (f) => {
      if (f.type === "dm.send" && refuse) throw new RequestError("rate_limited", "too many frames; slow down");
      return inner(f);
    };
    const p = s.send("9", "hi")!;
    await flush();
    await flush();
    expect(s.entries("9")[0]).toMatchObject({ state: "failed", error: "too many frames; slow down" });
    refuse = false;
    s.retry("9", p.client_msg_id);
    await flush();
    await flush();
    expect(t.of("dm.send").map((f) => f.client_msg_id)).toEqual([p.client_msg_id, p.client_msg_id]);
    expect(s.outboxSize).toBe(0);
  });

  it("never lets an older list answer roll a conversation back", async () => {
    server(t, []);
    await s.connected(false);
    s.applyEvent({ event: "dm_message", message: fromBob(5) });
    t.handler = () => ({ kind: "conversations", conversations: [summary({ last_seq: 3 })] });
    await s.loadConversations();
    expect(s.convs.get("9")!.summary.last_seq).toBe(5);
  });

  it("tracks invites live and tells about answers", async () => {
    server(t, []);
    await s.connected(false);
    const notes: string[] = [];
    s.on("notice", () => notes.push(...s.notices.splice(0).map((n) => n.text)));
    const link = { user_id: "3", username: "cy", state: "pending" as const, direction: "incoming" as const, updated_at_ms: 1 };
    s.applyEvent({ event: "invite_updated", link });
    expect(s.incomingInvites).toBe(1);
    s.applyEvent({ event: "invite_updated", link: { ...link, user_id: "4", username: "dee", direction: "outgoing", state: "accepted" } });
    expect(notes).toEqual(["cy invited you to connect", "dee accepted your invite"]);
  });

  it("forgets a removed connection live and says so", async () => {
    server(t, []);
    await s.connected(false);
    const notes: string[] = [];
    s.on("notice", () => notes.push(...s.notices.splice(0).map((n) => n.text)));
    const link = { user_id: "3", username: "cy", state: "accepted" as const, direction: "incoming" as const, updated_at_ms: 1 };
    s.applyEvent({ event: "invite_updated", link });
    s.applyEvent({ event: "invite_updated", link: { ...link, user_id: "4", username: "dee", state: "pending" } });
    s.applyEvent({ event: "connection_removed", user_id: "3" });
    s.applyEvent({ event: "connection_removed", user_id: "4" });
    s.applyEvent({ event: "connection_removed", user_id: "5" }); // unknown (or already gone): ignored
    expect(s.links.size).toBe(0);
    expect(notes).toEqual(["dee invited you to connect", "You are no longer connected with cy"]);
  });

  it("ties an invite's notice to the invite, pending until answered here or elsewhere", async () => {
    server(t, []);
    await s.connected(false);
    const link = { user_id: "3", username: "cy", state: "pending" as const, direction: "incoming" as const, updated_at_ms: 1 };
    s.applyEvent({ event: "invite_updated", link });
    expect(s.notices.splice(0)).toEqual([{ text: "cy invited you to connect", kind: "info", invite: "3" }]);
    expect(s.invitePending("3")).toBe(true);
    t.handler = () => ({ kind: "link", link: { ...link, state: "accepted" } });
    await s.respond("3", true);
    expect(s.invitePending("3")).toBe(false);
    // answered on another device: the live update says so
    s.applyEvent({ event: "invite_updated", link: { ...link, user_id: "5" } });
    s.applyEvent({ event: "invite_updated", link: { ...link, user_id: "5", state: "rejected" } });
    expect(s.invitePending("5")).toBe(false);
    expect(s.invitePending("nobody")).toBe(false);
    // an answer to my own invite is not tied to anything
    s.applyEvent({ event: "invite_updated", link: { ...link, user_id: "6", direction: "outgoing", state: "accepted" } });
    expect(s.notices.at(-1)).toEqual({ text: "cy accepted your invite", kind: "info" });
  });
});
