import { describe, expect, it } from "vitest";
import { backoff } from "./conn";
import { parseRoute } from "./route";
import { passwordProblem, signupIds, usernameProblem } from "./ui/login";

describe("reconnect backoff", () => {
  it("doubles from the base up to the cap, with jitter in the upper half", () => {
    const lo = (a: number) => backoff(a, 500, 15_000, () => 0);
    const hi = (a: number) => backoff(a, 500, 15_000, () => 1);
    expect([0, 1, 2, 3].map(hi)).toEqual([500, 1000, 2000, 4000]);
    expect([0, 1, 2, 3].map(lo)).toEqual([250, 500, 1000, 2000]);
    expect(hi(10)).toBe(15_000);
    expect(hi(1000)).toBe(15_000);
    expect(lo(1000)).toBe(7_500);
  });
});

describe("routes", () => {
  it("reads the hash", () => {
    expect(parseRoute("")).toEqual({ page: "chats", conv: null });
    expect(parseRoute("#/chats/123")).toEqual({ page: "chats", conv: "123" });
    expect(parseRoute("#/people")).toEqual({ page: "people", conv: null });
    expect(parseRoute("#/account/x")).toEqual({ page: "account", conv: null });
    expect(parseRoute("#/chats/<script>")).toEqual({ page: "chats", conv: null });
    expect(parseRoute("#/chats/%E0%A4%A")).toEqual({ page: "chats", conv: null });
    expect(parseRoute("#/nope")).toEqual({ page: "chats", conv: null });
  });
});

describe("sign-up rules (as topics/src/validate.rs)", () => {
  it("usernames", () => {
    expect(usernameProblem(" Alice_1 ")).toBeNull();
    for (const bad of ["ab", "1abc", "al ice", "al-ice", "a".repeat(33), "élan"]) {
      expect(usernameProblem(bad), bad).not.toBeNull();
    }
  });
  it("passwords", () => {
    expect(passwordProblem("hunter2!x")).toBeNull();
    expect(passwordProblem("correcthorsebattery")).toBeNull();
    for (const bad of ["short1", "abcdefgh", "12345678", "x1".repeat(65)]) {
      expect(passwordProblem(bad), bad).not.toBeNull();
    }
  });
});

describe("sign-up ids", () => {
  it("stay the same for a retry of the same sign-up and change with the username or password", () => {
    let n = 0;
    const id = signupIds(() => `id-${++n}`);
    expect(id("ann", "pass-word-1")).toBe("id-1");
    expect(id("ann", "pass-word-1")).toBe("id-1");
    expect(id("ann", "pass-word-2")).toBe("id-2");
    expect(id("bob", "pass-word-2")).toBe("id-3");
    expect(id("bob", "pass-word-2")).toBe("id-3");
    expect(signupIds()("ann", "p")).toMatch(/^[0-9a-f]{32}$/);
  });
});
