// Generated from the Rust types in topics/src by topics/src/schema.rs: do not edit.
// Regenerate with `UPDATE_GENERATED=1 cargo test -p topics generated`.

/**
 * A client frame: an optional request id the reply echoes, and the request.
 */
export type ClientFrame = { rid?: string | null, } & ({ "type": "ping" }
  | { "type": "user.create", username: string, password: string,
    /**
     * Chosen by the client, unguessable (a random UUID), the same for every resend of this
     * sign-up: a resend then completes what the first left undone, or is answered as the
     * first was (with the same password), instead of `conflict` "username is taken".
     */
    client_request_id?: string | null, }
  | { "type": "session.login", username: string, password: string,
    /**
     * Set by the edge from the `User-Agent` ([`crate::device::label`]), never by clients.
     */
    device?: string | null, }
  | { "type": "session.verify" }
  | { "type": "session.refresh" }
  | { "type": "session.list" }
  | { "type": "session.logout", session_id?: string | null, }
  | { "type": "session.logout_all" }
  | { "type": "user.me" }
  | { "type": "user.lookup", username?: string | null, user_id?: Id | null, }
  | { "type": "user.delete" }
  | { "type": "user.rotate_invite_code" }
  | { "type": "online.list", cursor?: string | null, limit?: number | null, }
  | { "type": "broadcast.send", text: string, }
  | { "type": "invite.send", code: string, }
  | { "type": "invite.respond", user_id: Id, accept: boolean, }
  | { "type": "invite.list" }
  | { "type": "connection.remove", user_id: Id, }
  | { "type": "dm.open", user_id: Id, }
  | { "type": "dm.list" }
  | { "type": "dm.history", conversation_id: Id, before_seq?: number | null, after_seq?: number | null, limit?: number | null, }
  | { "type": "dm.send", conversation_id: Id, client_msg_id: string, text: string,
    /**
     * The `client_msg_id` of the message this device typed just before this one in this
     * conversation, while that one is not acknowledged yet: this one is stored only after
     * it (else `out_of_order`), so a resent earlier message never lands behind a later one.
     */
    after_client_msg_id?: string | null, }
  | { "type": "dm.read", conversation_id: Id, seq: number, }
  | { "type": "dm.sync", since: { [key in Id]: number }, });

/**
 * Every request a client can make, over WebSocket or (mapped by the edge) over HTTP.
 */
export type Request =
  | { "type": "ping" }
  | { "type": "user.create", username: string, password: string,
    /**
     * Chosen by the client, unguessable (a random UUID), the same for every resend of this
     * sign-up: a resend then completes what the first left undone, or is answered as the
     * first was (with the same password), instead of `conflict` "username is taken".
     */
    client_request_id?: string | null, }
  | { "type": "session.login", username: string, password: string,
    /**
     * Set by the edge from the `User-Agent` ([`crate::device::label`]), never by clients.
     */
    device?: string | null, }
  | { "type": "session.verify" }
  | { "type": "session.refresh" }
  | { "type": "session.list" }
  | { "type": "session.logout", session_id?: string | null, }
  | { "type": "session.logout_all" }
  | { "type": "user.me" }
  | { "type": "user.lookup", username?: string | null, user_id?: Id | null, }
  | { "type": "user.delete" }
  | { "type": "user.rotate_invite_code" }
  | { "type": "online.list", cursor?: string | null, limit?: number | null, }
  | { "type": "broadcast.send", text: string, }
  | { "type": "invite.send", code: string, }
  | { "type": "invite.respond", user_id: Id, accept: boolean, }
  | { "type": "invite.list" }
  | { "type": "connection.remove", user_id: Id, }
  | { "type": "dm.open", user_id: Id, }
  | { "type": "dm.list" }
  | { "type": "dm.history", conversation_id: Id, before_seq?: number | null, after_seq?: number | null, limit?: number | null, }
  | { "type": "dm.send", conversation_id: Id, client_msg_id: string, text: string,
    /**
     * The `client_msg_id` of the message this device typed just before this one in this
     * conversation, while that one is not acknowledged yet: this one is stored only after
     * it (else `out_of_order`), so a resent earlier message never lands behind a later one.
     */
    after_client_msg_id?: string | null, }
  | { "type": "dm.read", conversation_id: Id, seq: number, }
  | { "type": "dm.sync", since: { [key in Id]: number }, };

/**
 * Everything the server writes to a WebSocket.
 */
export type ServerFrame =
  | { "type": "reply", rid: string | null, data: Response, }
  | { "type": "error", rid: string | null, code: ErrorCode, message: string, }
  | { "type": "event", data: Event, };

/**
 * An error as clients see it: a stable code and a human sentence.
 */
export type ErrorBody = { code: ErrorCode, message: string, };

export type ConversationSummary = { conversation_id: Id, peer_id: Id, peer: string, last_seq: number, last_message: Message | null, unread: number, };

export type Direction =
  | "outgoing"
  | "incoming";

export type ErrorCode =
  | "invalid_input"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "rate_limited"
  | "payload_too_large"
  | "unavailable"
  | "out_of_order"
  | "internal";

/**
 * Events pushed to clients without a request, tagged by `event`.
 */
export type Event =
  | { "event": "invite_updated", link: Link, }
  | { "event": "connection_removed", user_id: Id, }
  | { "event": "dm_message", message: Message, }
  | { "event": "broadcast", from_user_id: Id, from: string, text: string, sent_at_ms: number, }
  | { "event": "session_revoked", reason: string, };

/**
 * A 64-bit id; on the wire a decimal string such as `"42"`.
 */
export type Id = string;

/**
 * State of the link between me and another user.
 */
export type InviteState =
  | "pending"
  | "accepted"
  | "rejected";

export type Link = { user_id: Id, username: string, state: InviteState, direction: Direction, updated_at_ms: number, };

export type Message = { conversation_id: Id, seq: number, message_id: Id,
    /**
     * `None` once the author's account is deleted.
     */
    author_id: Id | null,
    /**
     * `"[deleted]"` once the author's account is deleted.
     */
    author: string, client_msg_id: string, text: string, sent_at_ms: number, };

export type OnlineUser = { user_id: Id, username: string, };

/**
 * Successful replies, tagged by `kind`.
 */
export type Response =
  | { "kind": "pong" }
  | { "kind": "ok" }
  | { "kind": "session", token: string, session_id: string, user_id: Id, username: string, idle_timeout_s: number, }
  | { "kind": "sessions", sessions: Array<SessionInfo>, }
  | { "kind": "signed_out" }
  | { "kind": "user", user: UserProfile,
    /**
     * Only in replies about the caller themself.
     */
    invite_code?: string | null, }
  | { "kind": "online", users: Array<OnlineUser>, next_cursor: string | null, }
  | { "kind": "links", links: Array<Link>, }
  | { "kind": "link", link: Link, }
  | { "kind": "conversation", conversation: ConversationSummary, }
  | { "kind": "conversations", conversations: Array<ConversationSummary>, }
  | { "kind": "history", conversation_id: Id, messages: Array<Message>,
    /**
     * More messages exist past this page in the direction asked for.
     */
    more: boolean, }
  | { "kind": "sent", message: Message,
    /**
     * True when this client_msg_id was already stored: the original is returned.
     */
    duplicate: boolean, }
  | { "kind": "synced", conversations: Array<SyncedConversation>, };

export type SessionInfo = { session_id: string, created_at_ms: number,
    /**
     * The login or the latest refresh of the session, whichever is later.
     */
    last_seen_ms: number, current: boolean,
    /**
     * What the session was opened from ("Chrome on Android"), from the login's `User-Agent`;
     * `None` when it sent none usable.
     */
    device: string | null, };

export type SyncedConversation = { conversation_id: Id, messages: Array<Message>, more: boolean, };

/**
 * A public profile.
 */
export type UserProfile = { user_id: Id, username: string, created_at_ms: number, };
