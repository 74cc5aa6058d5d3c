//! `online.list`: who is online, a page at a time over every live edge.

use crate::context::{Ctx, Outcome};
use crate::{refuse, Result};
use runtime::redis::redis::{self, AsyncCommands};
use std::collections::BTreeSet;
use topics::frames::OnlineUser;
use topics::{validate, ErrorCode, Response};

/// Merge per-edge pages (each sorted) into one page of `limit` distinct ids after `cursor`.
pub fn merge_page(pages: Vec<Vec<String>>, limit: usize) -> (Vec<String>, Option<String>) {
    let all: BTreeSet<String> = pages.into_iter().flatten().collect();
    let mut ids: Vec<String> = all.into_iter().take(limit + 1).collect();
    let more = ids.len() > limit;
    ids.truncate(limit);
    let next = if more { ids.last().cloned() } else { None };
    (ids, next)
}

/// Who is online now, across every live edge, `limit` at a time after `cursor`.
pub async fn online(ctx: &Ctx<'_>, cursor: Option<&str>, limit: Option<u32>) -> Result<Outcome> {
    let d = ctx.deps;
    ctx.caller()?;
    let limit = validate::page(limit, 50) as usize;
    let cursor = match cursor {
        Some(cur)
            if cur.len() == runtime::registry::ID_WIDTH
                && cur.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Some(cur.to_string())
        }
        Some(_) => return Err(refuse(ErrorCode::InvalidInput, "bad cursor")),
        None => None,
    };
    let mut c = d.redis.get().await?;
    let live = d.registry.live_edges(&mut c, runtime::now_ms()).await?;
    let min = cursor
        .map(|cur| format!("({cur}"))
        .unwrap_or_else(|| "-".to_string());
    let mut pages = Vec::new();
    for (edge, &epoch) in &live {
        let page: Vec<String> = c
            .zrangebylex_limit(
                d.registry.online_key(edge, epoch),
                &min,
                "+",
                0,
                limit as isize + 1,
            )
            .await?;
        pages.push(page);
    }
    let (ids, next_cursor) = merge_page(pages, limit);
    let users = if ids.is_empty() {
        vec![]
    } else {
        let uids: Vec<String> = ids
            .iter()
            .map(|p| p.trim_start_matches('0').to_string())
            .collect();
        let names: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(d.registry.unames_key())
            .arg(&uids)
            .query_async(&mut c)
            .await?;
        uids.iter()
            .zip(names)
            .filter_map(|(u, n)| {
                Some(OnlineUser {
                    user_id: u.parse().ok()?,
                    username: n.unwrap_or_default(),
                })
            })
            .collect()
    };
    Ok(Response::Online { users, next_cursor }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_pages_without_duplicates() {
        let p = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (ids, next) = merge_page(vec![p(&["01", "03", "05"]), p(&["02", "03", "04"])], 3);
        assert_eq!(ids, p(&["01", "02", "03"]));
        assert_eq!(next.as_deref(), Some("03"));
        let (ids, next) = merge_page(vec![p(&["01"]), p(&["01"])], 3);
        assert_eq!(ids, p(&["01"]));
        assert_eq!(next, None);
    }
}
