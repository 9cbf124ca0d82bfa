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
        let left = expires_at.saturating_sub(crate::common::now_s()).max(1);
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

    /// [`ReplayCache::reserve`], held by a guard: given back when the
    /// guard goes, unless [`Reservation::spend`] said the request got as
    /// far as its durable attempt record.
    pub fn hold(
        &self,
        iss: &str,
        jti: &str,
        expires_at: i64,
    ) -> Result<Reservation<'_>, ReplayError> {
        self.reserve(iss, jti, expires_at)?;
        Ok(Reservation {
            cache: self,
            iss: iss.to_string(),
            jti: jti.to_string(),
            spent: false,
        })
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
    /// trail, reading the live file and then the rotated files newest
    /// first, each backwards, and stopping at the first record older than
    /// any token that could still be presented: memory and time follow the
    /// records of the last token lifetime, not the trail's size. A jti is
    /// held until its token's recorded `exp` plus leeway, as the running
    /// gateway held it; records written before `exp` was recorded give
    /// `ts + max_lifetime_s + 2 × leeway_s` (a token may be issued up to
    /// the leeway ahead of the gateway's clock). Returns how many were
    /// restored.
    pub fn rebuild_from_audit(&self, live: &Path, max_lifetime_s: i64, leeway_s: i64) -> u64 {
        let now = crate::common::now_s();
        let window = max_lifetime_s.saturating_add(leeway_s.saturating_mul(2));
        let mut restored = 0;
        // Older records hold no token still alive.
        crate::audit::newest_first(live, now.saturating_sub(window), |ts, line| {
            // Cheap filter first: most records are not single-use attempts.
            if !contains(line, b"\"single_use\":true") {
                return true;
            }
            let Ok(rec) = serde_json::from_slice::<serde_json::Value>(line) else {
                return true;
            };
            if rec.get("phase").and_then(|p| p.as_str()) != Some("attempt") {
                return true;
            }
            let caller = rec.get("caller");
            let iss = caller.and_then(|c| c.get("iss")).and_then(|v| v.as_str());
            let jti = caller.and_then(|c| c.get("jti")).and_then(|v| v.as_str());
            let exp = caller.and_then(|c| c.get("exp")).and_then(|v| v.as_i64());
            if let (Some(iss), Some(jti)) = (iss, jti) {
                let until = match exp {
                    Some(exp) => exp.saturating_add(leeway_s),
                    None => ts.saturating_add(window),
                };
                let k = key(iss, jti);
                if until > now && !self.spent.contains_key(&k) {
                    self.insert(k, until);
                    restored += 1;
                }
            }
            true
        });
        restored
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// A single-use `jti` reserved for one request (see [`ReplayCache::hold`]).
pub struct Reservation<'a> {
    cache: &'a ReplayCache,
    iss: String,
    jti: String,
    spent: bool,
}

impl Reservation<'_> {
    /// The attempt is on disk: the `jti` stays spent whatever follows.
    pub fn spend(mut self) {
        self.spent = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.spent {
            self.cache.release(&self.iss, &self.jti);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_per_issuer_and_released_on_failure() {
        let c = ReplayCache::new(10);
        let exp = crate::common::now_s() + 60;
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
        let exp = crate::common::now_s() + 60;
        assert!(c.reserve("i", "1", exp).is_ok());
        assert!(c.reserve("i", "2", exp).is_ok());
        assert_eq!(c.reserve("i", "3", exp), Err(ReplayError::Full));
        assert_eq!(c.reserve("i", "1", exp), Err(ReplayError::Replayed));
    }

    fn attempt(ts: i64, jti: &str, exp: Option<i64>) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp(ts).unwrap();
        let mut caller = serde_json::json!({"iss": "i", "sub": "s", "team": "t",
            "jti": jti, "token_fp": "0", "single_use": true});
        if let Some(e) = exp {
            caller["exp"] = e.into();
        }
        serde_json::json!({"v": 1, "seq": 1, "ts": crate::common::rfc3339_millis(t),
            "phase": "attempt", "caller": caller, "prev": "0"})
        .to_string()
    }

    /// A token issued up to the leeway ahead of the gateway's clock lives
    /// past `ts + max lifetime + leeway`: rebuilt after a restart, its jti
    /// is held until its own `exp` plus leeway, as the running gateway held
    /// it, so it cannot be accepted a second time.
    #[test]
    fn a_rebuilt_jti_is_held_until_its_tokens_own_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        let now = crate::common::now_s();
        let (lifetime, leeway) = (900, 30);
        // Accepted 935 s ago with iat 25 s ahead: exp = ts + 925 = now - 10,
        // held until exp + leeway = now + 20. `ts + lifetime + leeway` is
        // already past.
        let ahead = attempt(now - 935, "ahead", Some(now - 935 + 925));
        // Expired for good: exp + leeway is past.
        let gone = attempt(now - 950, "gone", Some(now - 950 + 900));
        // Written before `exp` was recorded: ts + lifetime + 2 leeway.
        let legacy = attempt(now - 100, "legacy", None);
        std::fs::write(&live, format!("{gone}\n{ahead}\n{legacy}\n")).unwrap();
        let c = ReplayCache::new(10);
        assert_eq!(c.rebuild_from_audit(&live, lifetime, leeway), 2);
        assert_eq!(
            c.reserve("i", "ahead", now + 60),
            Err(ReplayError::Replayed)
        );
        assert_eq!(
            c.reserve("i", "legacy", now + 60),
            Err(ReplayError::Replayed)
        );
        assert_eq!(c.reserve("i", "gone", now + 60), Ok(()));
    }

    /// The rebuild reads newest first and stops at the first record older
    /// than any live token: a trail's older part is never read.
    #[test]
    fn the_rebuild_stops_at_records_older_than_any_live_token() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        let now = crate::common::now_s();
        let old = attempt(now - 5000, "old", Some(now + 600));
        let fresh = attempt(now - 10, "fresh", Some(now + 600));
        // An impossible old record (its exp far ahead) shows whether the
        // reader went past the cut-off: it must not be restored.
        std::fs::write(&live, format!("{old}\n{fresh}\n")).unwrap();
        let c = ReplayCache::new(10);
        assert_eq!(c.rebuild_from_audit(&live, 900, 30), 1);
        assert_eq!(c.reserve("i", "old", now + 60), Ok(()));
    }

    #[test]
    fn entries_leave_when_their_token_expires() {
        let c = ReplayCache::new(1);
        assert!(c.reserve("i", "old", crate::common::now_s()).is_ok());
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(c.len(), 0);
        assert!(c.reserve("i", "new", crate::common::now_s() + 60).is_ok());
    }
}
