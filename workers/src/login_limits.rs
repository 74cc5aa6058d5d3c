//! Brute-force limits of `session.login` that a stranger cannot turn into a lock-out of the owner.
//!
//! Only *failed* logins are counted, in sliding windows (Redis sorted sets of attempt times):
//! - per account **and** address: `login_failures_per_user_per_address_per_minute` (10) a minute;
//! - per account, from everywhere: `login_failures_per_user_per_hour` (100) an hour — the
//!   OWASP ASVS 2.2.1 ceiling. Addresses that never logged in to the account successfully
//!   ("unknown") share only nine tenths of it; the last tenth is kept for the addresses the
//!   owner logged in from within the last 30 days ("known"), so failures from elsewhere can
//!   never shut the owner out of an address they use, and the account still never sees more
//!   failures an hour than the ceiling.
//!
//! An attempt first takes a slot in both windows (so concurrent attempts cannot overshoot), is
//! refused with `rate_limited` if either is over its limit, and gives its slots back if it is
//! refused or the password is right: what stays in the windows are failures. The per-address
//! limit on all attempts (`login_attempts_per_address_per_minute`) is separate (see `auth`).

use crate::context::Deps;
use crate::settings::Limits;
use crate::Result;
use runtime::redis::redis::{self, AsyncCommands};
use topics::Id;

/// An address that logged in to an account stays known this long after its last success.
pub const KNOWN_FOR_MS: u64 = 30 * 24 * 3600 * 1000;
/// At most this many known addresses per account (the most recent ones).
pub const KNOWN_MAX: isize = 20;

const MINUTE_MS: u64 = 60_000;
const HOUR_MS: u64 = 3_600_000;

/// The pure policy: which counts (this attempt included) let an attempt through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    pub per_address_per_minute: u64,
    pub per_hour: u64,
}

impl Policy {
    pub fn new(l: &Limits) -> Self {
        Policy {
            per_address_per_minute: l.login_failures_per_user_per_address_per_minute,
            per_hour: l.login_failures_per_user_per_hour,
        }
    }

    /// How many failures an hour the account may have for an attempt from a known or an
    /// unknown address to go ahead: unknown addresses stop a tenth (at least one) short.
    pub fn hourly_ceiling(&self, known: bool) -> u64 {
        if known {
            self.per_hour
        } else {
            self.per_hour - (self.per_hour / 10).max(1).min(self.per_hour)
        }
    }

    /// Whether an attempt may check its password, given the failures in the address' minute
    /// and the account's hour with this attempt counted as one.
    pub fn admits(&self, address_minute: u64, account_hour: u64, known: bool) -> bool {
        address_minute <= self.per_address_per_minute && account_hour <= self.hourly_ceiling(known)
    }
}

/// Take a slot in a sliding window: drop entries older than the window, add this one, and
/// count. The set never holds more than the limit plus the attempts in flight, because refused
/// and successful attempts take theirs back out.
const TAKE_SCRIPT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZCARD', KEYS[1])
";

/// One attempt's slots in the two windows of an account.
pub struct Slots {
    address_key: String,
    account_key: String,
    member: String,
}

fn account_key(d: &Deps, name: &str) -> String {
    d.keys.key(format!("lf:{{{name}}}"))
}

fn known_key(d: &Deps, user: Id) -> String {
    d.keys.key(format!("lk:{{{user}}}"))
}

async fn take(d: &Deps, key: &str, window_ms: u64, member: &str, now: u64) -> Result<u64> {
    let mut c = d.redis.get().await?;
    let n: u64 = redis::Script::new(TAKE_SCRIPT)
        .key(key)
        .arg(now.saturating_sub(window_ms))
        .arg(now)
        .arg(member)
        .arg(window_ms)
        .invoke_async(&mut c)
        .await?;
    Ok(n)
}

/// Count this attempt against account `name` from `address`; `Ok(None)` if it is refused.
pub async fn begin(d: &Deps, name: &str, address: &str, user: Option<Id>) -> Result<Option<Slots>> {
    let policy = Policy::new(&d.limits);
    let now = runtime::now_ms();
    let slots = Slots {
        address_key: d.keys.key(format!("lf:{{{name}}}:{address}")),
        account_key: account_key(d, name),
        member: crate::sessions::new_session_id(),
    };
    let minute = take(d, &slots.address_key, MINUTE_MS, &slots.member, now).await?;
    let hour = take(d, &slots.account_key, HOUR_MS, &slots.member, now).await?;
    let known = match user {
        Some(u) if hour > policy.hourly_ceiling(false) => is_known(d, u, address, now).await?,
        _ => false,
    };
    if policy.admits(minute, hour, known) {
        Ok(Some(slots))
    } else {
        release(d, slots).await?;
        Ok(None)
    }
}

/// Take an attempt's slots back out: it was refused, or it was not a failure.
pub async fn release(d: &Deps, slots: Slots) -> Result<()> {
    let mut c = d.redis.get().await?;
    let _: () = c.zrem(&slots.address_key, &slots.member).await?;
    let _: () = c.zrem(&slots.account_key, &slots.member).await?;
    Ok(())
}

/// A successful login: the attempt was no failure, and its address is now known.
pub async fn succeeded(d: &Deps, slots: Slots, user: Id, address: &str) -> Result<()> {
    release(d, slots).await?;
    let now = runtime::now_ms();
    let key = known_key(d, user);
    let mut c = d.redis.get().await?;
    let _: () = redis::pipe()
        .zadd(&key, address, now)
        .zrembyscore(&key, "-inf", now.saturating_sub(KNOWN_FOR_MS))
        .zremrangebyrank(&key, 0, -(KNOWN_MAX + 1))
        .pexpire(&key, KNOWN_FOR_MS as i64)
        .query_async(&mut c)
        .await?;
    Ok(())
}

async fn is_known(d: &Deps, user: Id, address: &str, now: u64) -> Result<bool> {
    let mut c = d.redis.get().await?;
    let last: Option<f64> = c.zscore(known_key(d, user), address).await?;
    Ok(last.is_some_and(|t| t as u64 + KNOWN_FOR_MS > now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(per_address_per_minute: u64, per_hour: u64) -> Policy {
        Policy {
            per_address_per_minute,
            per_hour,
        }
    }

    #[test]
    fn the_defaults_meet_asvs() {
        let p = Policy::new(&Limits::default());
        assert_eq!(p, policy(10, 100));
        assert!(p.hourly_ceiling(true) <= 100, "ASVS 2.2.1");
        assert_eq!(p.hourly_ceiling(false), 90);
    }

    #[test]
    fn an_address_is_limited_on_its_own_failures() {
        let p = policy(3, 100);
        for n in 1..=3 {
            assert!(p.admits(n, n, false), "attempt {n}");
        }
        assert!(
            !p.admits(4, 4, false),
            "the fourth in a minute from one address"
        );
        assert!(!p.admits(4, 4, true), "known or not");
        // Another address with no failures of its own is not limited by the first one's.
        assert!(p.admits(1, 4, false));
    }

    #[test]
    fn unknown_addresses_stop_short_of_the_ceiling_known_ones_reach_it() {
        let p = policy(10, 10);
        assert_eq!(p.hourly_ceiling(false), 9);
        assert_eq!(p.hourly_ceiling(true), 10);
        assert!(p.admits(1, 9, false));
        assert!(
            !p.admits(1, 10, false),
            "unknown addresses have used their share"
        );
        assert!(p.admits(1, 10, true), "the owner's address still gets in");
        assert!(!p.admits(1, 11, true), "never more than the ceiling");
    }

    #[test]
    fn small_and_huge_ceilings() {
        // A tenth rounds up to one: an unknown address never gets the whole budget.
        assert_eq!(policy(10, 5).hourly_ceiling(false), 4);
        assert_eq!(policy(10, 1).hourly_ceiling(false), 0);
        assert_eq!(policy(10, 0).hourly_ceiling(false), 0);
        assert!(!policy(10, 0).admits(1, 1, true), "0 refuses every attempt");
        // `./sb up --limits bench` lifts them out of the way.
        let bench = policy(1_000_000, 1_000_000);
        assert_eq!(bench.hourly_ceiling(false), 900_000);
        assert!(bench.admits(1_000, 100_000, false));
    }
}
