// The wire shapes of topics/src/frames.rs, as the page sees them. Ids are decimal strings,
// sequence numbers and timestamps are JSON numbers.

export type Id = string;

export interface UserProfile {
  user_id: Id;
  username: string;
  created_at_ms: number;
}

export interface SessionInfo {
  session_id: string;
  created_at_ms: number;
  /** The login or the latest refresh. */
  last_seen_ms: number;
  current: boolean;
  /** What the session was opened from ("Chrome on Android"); null when unknown. */
  device?: string | null;
}

export interface OnlineUser {
  user_id: Id;
  username: string;
}

export type InviteState = "pending" | "accepted" | "rejected";
export type Direction = "outgoing" | "incoming";

export interface Link {
  user_id: Id;
  username: string;
  state: InviteState;
  direction: Direction;
  updated_at_ms: number;
}

export interface Message {
  conversation_id: Id;
  seq: number;
  message_id: Id;
  /** null once the author's account is deleted */
  author_id: Id | null;
  /** "[deleted]" once the author's account is deleted */
  author: string;
  client_msg_id: string;
  text: string;
  sent_at_ms: number;
}

export interface ConversationSummary {
  conversation_id: Id;
  peer_id: Id;
  peer: string;
  last_seq: number;
  last_message: Message | null;
  unread: number;
}

export interface SyncedConversation {
  conversation_id: Id;
  messages: Message[];
  more: boolean;
}

export type Reply =
  | { kind: "pong" }
  | { kind: "ok" }
  | {
      kind: "session";
      token: string;
      session_id: string;
      user_id: Id;
      username: string;
      idle_timeout_s: number;
    }
  | { kind: "sessions"; sessions: SessionInfo[] }
  | { kind: "signed_out" }
  | { kind: "user"; user: UserProfile; invite_code?: string }
  | { kind: "online"; users: OnlineUser[]; next_cursor: string | null }
  | { kind: "links"; links: Link[] }
  | { kind: "link"; link: Link }
  | { kind: "conversation"; conversation: ConversationSummary }
  | { kind: "conversations"; conversations: ConversationSummary[] }
  | { kind: "history"; conversation_id: Id; messages: Message[]; more: boolean }
  | { kind: "sent"; message: Message; duplicate: boolean }
  | { kind: "synced"; conversations: SyncedConversation[] };

export type ReplyOf<K extends Reply["kind"]> = Extract<Reply, { kind: K }>;

export interface BroadcastEvent {
  event: "broadcast";
  from_user_id: Id;
  from: string;
  text: string;
  sent_at_ms: number;
}

export type ServerEvent =
  | { event: "invite_updated"; link: Link }
  | { event: "connection_removed"; user_id: Id }
  | { event: "dm_message"; message: Message }
  | BroadcastEvent
  | { event: "session_revoked"; reason: string };

export type ErrorCode =
  | "invalid_input"
  | "unauthorized"
  | "forbidden"
  | "not_found"
  | "conflict"
  | "rate_limited"
  | "payload_too_large"
  | "unavailable"
  | "internal";

export type ServerFrame =
  | { type: "reply"; rid: string | null; data: Reply }
  | { type: "error"; rid: string | null; code: ErrorCode; message: string }
  | { type: "event"; data: ServerEvent };

/** Longest message or broadcast, in UTF-8 bytes (topics::validate::TEXT_MAX). */
export const TEXT_MAX = 4000;
