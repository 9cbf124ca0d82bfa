//! Step 5 (second half): single-use tokens.
//!
//! A token is single-use when it is request-bound (carries `htm`, `htu` or
//! `bh`) or when its grant says `single_use_tokens = true`. Its `(iss, jti)`
//! is reserved here when the request passes every check, released if the
//! request fails before its attempt record is durable, and otherwise kept
//! until the token could no longer be accepted (its `exp` plus leeway).
//! The set is bounded by `replay_cache_size`; when full, new single-use
//! tokens are refused (fail closed). At start it is rebuilt from the audit
//! trail, so a restart forgets nothing.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::sync::Cache;

/// Why a single-use token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("this jti was already used")]
    Replayed,
    #[error("the replay memory is full")]
    Full,
}

struct UntilExp;

impl Expiry<String, i64> for UntilExp {
    fn expire_after_create(&self, _: &String, expires_at: &i64, _: Instant) -> Option<Duration> {
        let left = expires_at.saturating_sub(crate::authn::now_s()).max(1);
        Some(Duration::from_secs(u64::try_from(left).unwrap_or(u64::MAX)))
    }
}

/// The `jti`s of single-use tokens that were spent.
pub struct ReplayCache {
    spent: Cache<String, i64>,
    /// Entries held: moka's own count lags; this one is exact on insert
    /// and catches up on removal (so it errs towards "full").
    held: Arc<AtomicU64>,
    limit: u64,
}

fn key(iss: &str, jti: &str) -> String {
    // Length-prefixed so that no (iss, jti) pair can collide with another.
    format!("{}:{iss}{jti}", iss.len())
}

impl ReplayCache {
    pub fn new(limit: u64) -> Self {
        let held = Arc::new(AtomicU64::new(0));
        let on_removal = held.clone();
        let spent = Cache::builder()
            .expire_after(UntilExp)
            .eviction_listener(move |_k, _v, _cause| {
                on_removal.fetch_sub(1, Ordering::SeqCst);
            })
            .build();
        ReplayCache { spent, held, limit }
    }

    fn insert(&self, k: String, until: i64) {
        self.held.fetch_add(1, Ordering::SeqCst);
        self.spent.insert(k, until);
    }

    /// Reserves `(iss, jti)` until `expires_at` (unix seconds), or says why not.
    pub fn reserve(&self, iss: &str, jti: &str, expires_at: i64) -> Result<(), ReplayError> {
        let k = key(iss, jti);
        if self.spent.contains_key(&k) {
            return Err(ReplayError::Replayed);
        }
        if self.held.load(Ordering::SeqCst) >= self.limit {
            // Let expired entries leave before deciding.
            self.spent.run_pending_tasks();
            if self.held.load(Ordering::SeqCst) >= self.limit {
                return Err(ReplayError::Full);
            }
        }
        let entry = self.spent.entry(k).or_insert_with(|| {
            self.held.fetch_add(1, Ordering::SeqCst);
            expires_at
        });
        if entry.is_fresh() {
            Ok(())
        } else {
            Err(ReplayError::Replayed)
        }
    }

    /// Gives a reservation back: the request was not forwarded.
    pub fn release(&self, iss: &str, jti: &str) {
        self.spent.invalidate(&key(iss, jti));
    }

    pub fn len(&self) -> u64 {
        self.spent.run_pending_tasks();
        self.held.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reserves every single-use `jti` of `attempt` records in the audit
    /// trail (the live file, then rotated files newest first, as far back
    /// as a token could still be presented): their token was accepted at
    /// `ts`, so it expires at most `max_lifetime_s + leeway_s` later.
    /// Returns how many were restored.
    pub fn rebuild_from_audit(&self, live: &Path, max_lifetime_s: i64, leeway_s: i64) -> u64 {
        let now = crate::authn::now_s();
        let window = max_lifetime_s.saturating_add(leeway_s);
        let mut files = crate::audit::rotated_files(live);
        files.push(live.to_path_buf());
        let mut restored = 0;
        for file in files.iter().rev() {
            let Ok(data) = std::fs::read(file) else {
                continue;
            };
            let mut oldest: Option<i64> = None;
            for line in data.split(|b| *b == b'\n') {
                if oldest.is_none() {
                    oldest = record_ts(line);
                }
                // Cheap filter first: most records are not single-use attempts.
                if !contains(line, b"\"single_use\":true") {
                    continue;
                }
                let Ok(rec) = serde_json::from_slice::<serde_json::Value>(line) else {
                    continue;
                };
                if rec.get("phase").and_then(|p| p.as_str()) != Some("attempt") {
                    continue;
                }
                let caller = rec.get("caller");
                let iss = caller.and_then(|c| c.get("iss")).and_then(|v| v.as_str());
                let jti = caller.and_then(|c| c.get("jti")).and_then(|v| v.as_str());
                if let (Some(iss), Some(jti), Some(ts)) = (iss, jti, record_ts(line)) {
                    let until = ts.saturating_add(window);
                    if until > now {
                        self.insert(key(iss, jti), until);
                        restored += 1;
                    }
                }
            }
            // This file starts before any token still alive: older files
            // hold nothing that matters.
            if oldest.is_some_and(|t| t.saturating_add(window) < now) {
                break;
            }
        }
        restored
    }
}

fn record_ts(line: &[u8]) -> Option<i64> {
    let rec: serde_json::Value = serde_json::from_slice(line).ok()?;
    let ts = rec.get("ts")?.as_str()?;
    time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_per_issuer_and_released_on_failure() {
        let c = ReplayCache::new(10);
        let exp = crate::authn::now_s() + 60;
        assert_eq!(c.reserve("iss-a", "j1", exp), Ok(()));
        assert_eq!(c.reserve("iss-a", "j1", exp), Err(ReplayError::Replayed));
        assert_eq!(c.reserve("iss-b", "j1", exp), Ok(()));
        // No (iss, jti) pair collides with another by concatenation.
        assert_eq!(c.reserve("iss-a", "j", exp), Ok(()));
        assert_eq!(c.reserve("iss-", "aj", exp), Ok(()));
        c.release("iss-a", "j1");
        assert_eq!(c.reserve("iss-a", "j1", exp), Ok(()));
    }

    #[test]
    fn when_full_new_single_use_tokens_are_refused() {
        let c = ReplayCache::new(2);
        let exp = crate::authn::now_s() + 60;
        assert!(c.reserve("i", "1", exp).is_ok());
        assert!(c.reserve("i", "2", exp).is_ok());
        assert_eq!(c.reserve("i", "3", exp), Err(ReplayError::Full));
        assert_eq!(c.reserve("i", "1", exp), Err(ReplayError::Replayed));
    }

    #[test]
    fn entries_leave_when_their_token_expires() {
        let c = ReplayCache::new(1);
        assert!(c.reserve("i", "old", crate::authn::now_s()).is_ok());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.len(), 0);
        assert!(c.reserve("i", "new", crate::authn::now_s() + 60).is_ok());
    }
}
