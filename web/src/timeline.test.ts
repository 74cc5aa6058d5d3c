import { describe, expect, it } from "vitest";
import { Timeline } from "./timeline";
import { msg } from "./test-helpers";

const seqs = (t: Timeline) => t.messages.map((m) => m.seq);

describe("Timeline", () => {
  it("keeps messages sorted whatever order they arrive in", () => {
    const t = new Timeline();
    t.insert([msg(5), msg(2)]);
    t.insert([msg(9), msg(1), msg(7)]);
    t.insert([msg(3)]);
    expect(seqs(t)).toEqual([1, 2, 3, 5, 7, 9]);
    expect(t.oldest).toBe(1);
    expect(t.newest).toBe(9);
  });

  it("holds each sequence number once, keeping the first copy", () => {
    const t = new Timeline();
    expect(t.insert([msg(1), msg(2), msg(2)]).map((m) => m.seq)).toEqual([1, 2]);
    expect(t.insert([msg(2, { text: "again" }), msg(1), msg(3)]).map((m) => m.seq)).toEqual([3]);
    expect(seqs(t)).toEqual([1, 2, 3]);
    expect(t.messages[1].text).toBe("m2");
    expect(t.has(2)).toBe(true);
    expect(t.has(4)).toBe(false);
  });

  it("finds where catch-up must start: the end of the unbroken run", () => {
    const t = new Timeline();
    expect(t.contiguousNewest()).toBe(0);
    t.insert([msg(51), msg(52), msg(53), msg(60)]);
    expect(t.contiguousNewest()).toBe(53);
    t.insert([msg(54), msg(55), msg(56), msg(57), msg(58), msg(59)]);
    expect(t.contiguousNewest()).toBe(60);
  });

  it("sees a hole only after the first page is loaded", () => {
    const t = new Timeline();
    t.insert([msg(1)]);
    expect(t.gapBefore(3)).toBe(false);
    t.loaded = true;
    expect(t.gapBefore(2)).toBe(false);
    expect(t.gapBefore(3)).toBe(true);
  });

  it("stays sorted and unique under random interleavings", () => {
    let seed = 42;
    const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
    for (let round = 0; round < 50; round++) {
      const t = new Timeline();
      const all = Array.from({ length: 40 }, (_, i) => msg(i + 1));
      for (let k = 0; k < 120; k++) {
        const batch = Array.from({ length: 1 + Math.floor(rnd() * 4) }, () => all[Math.floor(rnd() * all.length)]);
        t.insert(batch);
      }
      t.insert(all);
      expect(seqs(t)).toEqual(all.map((m) => m.seq));
    }
  });
});
