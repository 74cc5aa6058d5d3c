// Builders shared by the unit tests.

import type { Message } from "./types";

/** A message of conversation 9 by ann (user 1). */
export function msg(seq: number, over: Partial<Message> = {}): Message {
  return {
    conversation_id: "9",
    seq,
    message_id: String(1000 + seq),
    author_id: "1",
    author: "ann",
    client_msg_id: `c${seq}`,
    text: `m${seq}`,
    sent_at_ms: 1_700_000_000_000 + seq,
    ...over,
  };
}
