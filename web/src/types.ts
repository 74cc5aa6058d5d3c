// The wire shapes of topics/src (frames.rs, error.rs, id.rs), as the page sees them. They are
// generated from the Rust types into generated/frames.ts (do not edit it: change the Rust types
// and run `UPDATE_GENERATED=1 cargo test -p topics generated`; docs/protocol.md says more). This
// module gives them the names the page uses. Ids are decimal strings, sequence numbers and
// timestamps are JSON numbers.

import type { Event, Response } from "./generated/frames";

export type {
  ConversationSummary,
  Direction,
  ErrorBody,
  ErrorCode,
  Id,
  InviteState,
  Link,
  Message,
  OnlineUser,
  Request,
  ServerFrame,
  SessionInfo,
  SyncedConversation,
  UserProfile,
} from "./generated/frames";

/** A successful reply, tagged by `kind` (topics' `Response`, not the DOM's). */
export type Reply = Response;

export type ReplyOf<K extends Reply["kind"]> = Extract<Reply, { kind: K }>;

/** An event pushed without a request, tagged by `event` (topics' `Event`, not the DOM's). */
export type ServerEvent = Event;

export type BroadcastEvent = Extract<ServerEvent, { event: "broadcast" }>;

/** Longest message or broadcast, in UTF-8 bytes (topics::validate::TEXT_MAX). */
export const TEXT_MAX = 4000;
