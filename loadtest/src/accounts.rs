//! Accounts `<prefix><n>` with one fixed password, reused across runs: a cached session is
//! checked with `GET /api/v1/users/me`; otherwise sign up (201, or 409 when it exists) and log
//! in. Logins cost ~50 ms of Argon2 each by design, so they are few and cached.

use crate::net::source_addr;
use crate::{Error, Result};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use topics::{Id, Response};

/// A logged-in account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub username: String,
    pub token: String,
    pub user_id: Id,
    pub invite_code: String,
}

#[derive(Default, Serialize, Deserialize)]
struct CacheFile {
    /// username → token
    tokens: BTreeMap<String, String>,
}

/// How the account phase went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountStats {
    pub users: u64,
    pub reused_sessions: u64,
    pub signed_up: u64,
    pub logged_in: u64,
}

pub struct Accounts {
    clients: Vec<reqwest::Client>,
    targets: Vec<String>,
    password: String,
    prefix: String,
    cache: Option<PathBuf>,
    quiet: bool,
}

/// Logins and sign-ups in flight at once (each is ~50 ms of worker CPU).
const ARGON_CONCURRENCY: usize = 8;
/// Cheap checks of cached sessions in flight at once.
const CHECK_CONCURRENCY: usize = 32;
/// How long one account may keep retrying rate-limited or unavailable answers.
const RETRY_FOR: Duration = Duration::from_secs(120);

impl Accounts {
    pub fn new(
        targets: Vec<String>,
        source_addrs: u8,
        prefix: &str,
        password: &str,
        cache: Option<PathBuf>,
        quiet: bool,
    ) -> Result<Accounts> {
        let n = source_addrs.max(1) as usize;
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let mut b = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(8);
            if let Some(ip) = source_addr(i, source_addrs) {
                b = b.local_address(ip);
            }
            clients.push(
                b.build()
                    .map_err(|e| Error::Setup(format!("http client: {e}")))?,
            );
        }
        Ok(Accounts {
            clients,
            targets,
            password: password.into(),
            prefix: prefix.into(),
            cache,
            quiet,
        })
    }

    pub fn username(&self, n: usize) -> String {
        format!("{}{n}", self.prefix)
    }

    fn load_cache(path: &Path) -> CacheFile {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Sessions for users `0..n`, in order.
    pub async fn ensure(&self, n: usize) -> Result<(Vec<Session>, AccountStats)> {
        let cached = self
            .cache
            .as_deref()
            .map(Self::load_cache)
            .unwrap_or_default();
        let argon = Arc::new(Semaphore::new(ARGON_CONCURRENCY));
        let stats = Arc::new(Counters::default());
        let done = Arc::new(AtomicU64::new(0));
        let progress = {
            let (done, stats, quiet) = (done.clone(), stats.clone(), self.quiet);
            tokio::spawn(async move {
                let mut t = tokio::time::interval(Duration::from_secs(1));
                t.tick().await;
                loop {
                    t.tick().await;
                    if !quiet {
                        println!(
                            "accounts {}/{n}: {} sessions reused, {} signed up, {} logged in",
                            done.load(Ordering::Relaxed),
                            stats.reused.load(Ordering::Relaxed),
                            stats.signed_up.load(Ordering::Relaxed),
                            stats.logged_in.load(Ordering::Relaxed)
                        );
                    }
                }
            })
        };
        let results: Vec<Result<Session>> = futures::stream::iter(0..n)
            .map(|i| {
                let token = cached.tokens.get(&self.username(i)).cloned();
                let (argon, stats, done) = (argon.clone(), stats.clone(), done.clone());
                async move {
                    let r = self.one(i, token, &argon, &stats).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    r
                }
            })
            .buffered(CHECK_CONCURRENCY)
            .collect()
            .await;
        progress.abort();
        let sessions = results.into_iter().collect::<Result<Vec<_>>>()?;
        if let Some(path) = &self.cache {
            let mut file = Self::load_cache(path);
            for s in &sessions {
                file.tokens.insert(s.username.clone(), s.token.clone());
            }
            let text = serde_json::to_string(&file).expect("cache serialises");
            let tmp = path.with_extension("json.tmp");
            if std::fs::write(&tmp, text)
                .and_then(|_| std::fs::rename(&tmp, path))
                .is_err()
            {
                eprintln!(
                    "warning: could not write the session cache {}",
                    path.display()
                );
            }
        }
        let st = AccountStats {
            users: n as u64,
            reused_sessions: stats.reused.load(Ordering::Relaxed),
            signed_up: stats.signed_up.load(Ordering::Relaxed),
            logged_in: stats.logged_in.load(Ordering::Relaxed),
        };
        Ok((sessions, st))
    }

    /// The SDK's HTTP client of user `i`: its source address, its target.
    fn http(&self, i: usize) -> client::Http {
        let base = &self.targets[i % self.targets.len()];
        client::Http::from_client(
            &format!("http://{base}"),
            self.clients[i % self.clients.len()].clone(),
        )
    }

    async fn one(
        &self,
        i: usize,
        cached: Option<String>,
        argon: &Semaphore,
        stats: &Counters,
    ) -> Result<Session> {
        let name = self.username(i);
        let http = self.http(i);
        if let Some(token) = cached {
            if let Some(s) = self.me(&http, &name, &token).await? {
                stats.reused.fetch_add(1, Ordering::Relaxed);
                return Ok(s);
            }
        }
        let _permit = argon.acquire().await.expect("semaphore open");
        // One id for every try of this sign-up: a resend after a lost answer gets the account.
        let request_id = client::request_id();
        match retrying("POST /api/v1/users", || {
            http.sign_up(&name, &self.password, Some(&request_id))
        })
        .await?
        {
            Ok(_) => {
                stats.signed_up.fetch_add(1, Ordering::Relaxed);
            }
            Err(client::Error::Api {
                status: Some(409), ..
            }) => {}
            Err(e) => return Err(Error::Setup(format!("sign-up of {name}: {e}"))),
        }
        let token = match retrying("POST /api/v1/sessions", || {
            http.log_in(&name, &self.password)
        })
        .await?
        {
            Ok(s) => s.token,
            Err(e) => {
                return Err(Error::Setup(format!(
                    "login of {name}: {e} (a different --password from an earlier run?)"
                )))
            }
        };
        stats.logged_in.fetch_add(1, Ordering::Relaxed);
        self.me(&http, &name, &token)
            .await?
            .ok_or_else(|| Error::Setup(format!("{name}: a fresh session was refused")))
    }

    /// The account behind `token`, or None when the session is not valid (any more).
    async fn me(&self, http: &client::Http, name: &str, token: &str) -> Result<Option<Session>> {
        match retrying("GET /api/v1/users/me", || http.me(token)).await? {
            Ok(Response::User { user, invite_code }) => {
                if user.username != name {
                    return Ok(None);
                }
                Ok(Some(Session {
                    username: name.into(),
                    token: token.into(),
                    user_id: user.user_id,
                    invite_code: invite_code.unwrap_or_default(),
                }))
            }
            Err(client::Error::Api {
                status: Some(401 | 404),
                ..
            }) => Ok(None),
            Ok(other) => Err(Error::Setup(format!(
                "{name}: GET /users/me answered {other:?}"
            ))),
            Err(e) => Err(Error::Setup(format!("{name}: GET /users/me answered {e}"))),
        }
    }
}

/// Whether an HTTP call is worth repeating: a 429 / 502 / 503 answer, or no answer at all.
fn busy(e: &client::Error) -> bool {
    match e {
        client::Error::Http(_) => true,
        client::Error::Api {
            status: Some(s), ..
        }
        | client::Error::Unexpected { status: s, .. } => matches!(s, 429 | 502 | 503),
        _ => false,
    }
}

/// Run one HTTP call, repeating it while it is [`busy`] for up to [`RETRY_FOR`] (250 ms,
/// doubling up to 5 s, between tries): its last outcome.
async fn retrying<T, F, Fut>(what: &str, mut call: F) -> Result<client::Result<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = client::Result<T>>,
{
    let backoff = client::Backoff {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(5),
        attempts: None,
        jitter: 0.0,
    };
    let start = tokio::time::Instant::now();
    let mut n = 0;
    loop {
        let r = call().await;
        match &r {
            Err(e) if busy(e) => {
                if start.elapsed() > RETRY_FOR {
                    return Err(Error::Setup(format!(
                        "{what}: still failing after {RETRY_FOR:?}: {e}"
                    )));
                }
            }
            _ => return Ok(r),
        }
        tokio::time::sleep(backoff.delay(n)).await;
        n += 1;
    }
}

#[derive(Default)]
struct Counters {
    reused: AtomicU64,
    signed_up: AtomicU64,
    logged_in: AtomicU64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_busy_answers_and_lost_calls_only() {
        let api = |status| client::Error::Api {
            status: Some(status),
            error: topics::ErrorBody::new(topics::ErrorCode::Unavailable, "retry"),
        };
        assert!(busy(&api(503)));
        assert!(busy(&api(429)));
        assert!(!busy(&api(409)));
        assert!(!busy(&api(401)));
        let page = |status| client::Error::Unexpected {
            status,
            body: "<html>".into(),
        };
        assert!(busy(&page(502)));
        assert!(!busy(&page(500)));
        assert!(!busy(&client::Error::UnexpectedReply("ok".into())));
    }
}
