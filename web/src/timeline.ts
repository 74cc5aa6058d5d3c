// One conversation's messages as this page holds them: sorted by sequence number, each sequence
// number at most once, whatever order or how many times the server's pages, live events and
// catch-up replies bring them.

import type { Message } from "./types";

export class Timeline {
  /** Ascending by seq, unique seq. */
  readonly messages: Message[] = [];
  /** The latest page has been fetched (live messages are kept from then on). */
  loaded = false;
  loading = false;
  error: string | null = null;
  /** The server has messages older than `oldest`. */
  hasOlder = false;
  loadingOlder = false;
  olderError: string | null = null;

  get newest(): number {
    return this.messages.length ? this.messages[this.messages.length - 1].seq : 0;
  }

  get oldest(): number {
    return this.messages.length ? this.messages[0].seq : 0;
  }

  /** Where `seq` is, or where it would go (first index with a larger or equal seq). */
  private index(seq: number): number {
    let lo = 0;
    let hi = this.messages.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.messages[mid].seq < seq) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  has(seq: number): boolean {
    const i = this.index(seq);
    return i < this.messages.length && this.messages[i].seq === seq;
  }

  /** Insert messages in order, skipping sequence numbers already held; returns those added. */
  insert(batch: readonly Message[]): Message[] {
    const added: Message[] = [];
    for (const m of batch) {
      const n = this.messages.length;
      if (n === 0 || m.seq > this.messages[n - 1].seq) {
        this.messages.push(m); // the common case: newer than everything held
        added.push(m);
        continue;
      }
      const i = this.index(m.seq);
      if (i < this.messages.length && this.messages[i].seq === m.seq) continue;
      this.messages.splice(i, 0, m);
      added.push(m);
    }
    return added;
  }

  /**
   * The highest seq up to which nothing is missing, counting from the oldest message held.
   * Catch-up asks for what comes after it.
   */
  contiguousNewest(): number {
    const ms = this.messages;
    if (!ms.length) return 0;
    let last = ms[0].seq;
    for (let i = 1; i < ms.length; i++) {
      if (ms[i].seq !== last + 1) break;
      last = ms[i].seq;
    }
    return last;
  }

  /** Would `seq` leave a hole after the newest message held? */
  gapBefore(seq: number): boolean {
    return this.loaded && this.messages.length > 0 && seq > this.newest + 1;
  }
}
