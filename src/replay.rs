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

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Why a single-use token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("this jti was already used")]
    Replayed,
    #[error("the replay memory is full")]
    Full,
}

/// What is remembered of an `(iss, jti)`: 96 bits of a keyed hash of it
/// (SipHash with this process's random keys). Two different pairs share a
/// key with probability about n²/2⁹⁷ (2⁻⁵⁷ for a million remembered
/// tokens), and a shared key refuses the newer token as a replay: the
/// error fails closed. The keys are secret and new at every start (the
/// memory is rebuilt from the trail), so a caller cannot aim for one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key([u32; 3]);

impl Key {
    fn rest(&self) -> u64 {
        u64::from(self.0[0]) << 32 | u64::from(self.0[1])
    }
}

/// Entries a page holds: 255 × 16 bytes and its header fill one 4 KiB
/// allocation.
const PAGE_SLOTS: usize = 255;

/// A fixed-size block of entries, scanned linearly (a few hundred
/// nanoseconds at most, against tens of microseconds for the signature a
/// single-use token costs). `until[i]`: the last second (unix time, u32:
/// until 2106) at which the token of entry `i` could still be accepted.
struct Page {
    /// `Key.0[2]`, scanned first (1 KiB: a few cache lines, vectorized).
    tag: [u32; PAGE_SLOTS],
    /// `Key.0[0..2]`, compared where the tag matched.
    rest: [u64; PAGE_SLOTS],
    until: [u32; PAGE_SLOTS],
    len: u16,
    /// Low bits of `Key.0[0]` all its keys share (extendible hashing).
    depth: u8,
}

impl Page {
    fn new(depth: u8) -> Box<Page> {
        Box::new(Page {
            tag: [0; PAGE_SLOTS],
            rest: [0; PAGE_SLOTS],
            until: [0; PAGE_SLOTS],
            len: 0,
            depth,
        })
    }

    fn find(&self, k: &Key) -> Option<usize> {
        let rest = k.rest();
        let len = usize::from(self.len);
        let mut from = 0;
        while let Some(i) = self.tag[from..len].iter().position(|t| *t == k.0[2]) {
            if self.rest[from + i] == rest {
                return Some(from + i);
            }
            from += i + 1;
        }
        None
    }

    fn key(&self, i: usize) -> Key {
        let r = self.rest[i];
        Key([(r >> 32) as u32, r as u32, self.tag[i]])
    }

    /// Room is checked by the caller.
    fn push(&mut self, k: Key, until: u32) {
        let i = usize::from(self.len);
        self.tag[i] = k.0[2];
        self.rest[i] = k.rest();
        self.until[i] = until;
        self.len += 1;
    }

    fn remove(&mut self, i: usize) {
        let last = usize::from(self.len) - 1;
        self.tag[i] = self.tag[last];
        self.rest[i] = self.rest[last];
        self.until[i] = self.until[last];
        self.len -= 1;
    }

    /// Drops the entries whose token has expired; how many went.
    fn sweep(&mut self, now: i64) -> usize {
        let before = self.len;
        let mut i = 0;
        while i < usize::from(self.len) {
            if i64::from(self.until[i]) < now {
                self.remove(i);
            } else {
                i += 1;
            }
        }
        usize::from(before - self.len)
    }
}

/// Deepest a page may split: a directory of 2²⁰ entries (4 MiB). Only 255
/// keys sharing 20 bits of a secret hash in one shard get there; their
/// page then refuses new tokens (fail closed) until some expire.
const MAX_DEPTH: u8 = 20;

/// One shard: pages found through a directory indexed by the low `depth`
/// bits of `Key.0[0]` (extendible hashing). A full page first drops its
/// expired entries, else splits in two: growth allocates one 4 KiB page at
/// a time and never frees a large array, so no resident memory is left
/// behind in the allocator (a hash table that doubles leaves its old
/// array, half its size, behind: measured 57 against 36 bytes a jti).
/// Pages stay allocated once made: the memory keeps its high-water mark,
/// which `replay_cache_size` bounds.
#[derive(Default)]
struct Shard {
    dir: Vec<u32>,
    depth: u8,
    // Boxed on purpose: a `Vec<Page>` would move and free every page
    // each time it grows, the very thing pages are here to avoid.
    #[allow(clippy::vec_box)]
    pages: Vec<Box<Page>>,
}

impl Shard {
    fn page_of(&self, k: &Key) -> Option<usize> {
        let mask = (1u64 << self.depth) - 1;
        let i = usize::try_from(u64::from(k.0[0]) & mask).ok()?;
        self.dir.get(i).map(|p| *p as usize)
    }

    fn find(&self, k: &Key) -> Option<(usize, usize)> {
        let p = self.page_of(k)?;
        let slot = self.pages.get(p)?.find(k)?;
        Some((p, slot))
    }

    /// Inserts a key known to be absent; `Full` when its page is full of
    /// live tokens at the deepest split. Returns how many expired entries
    /// were dropped on the way.
    fn insert(&mut self, k: Key, until: u32, now: i64) -> Result<usize, ReplayError> {
        if self.pages.is_empty() {
            self.pages.push(Page::new(0));
            self.dir = vec![0];
            self.depth = 0;
        }
        let mut swept = 0;
        loop {
            let p = self.page_of(&k).ok_or(ReplayError::Full)?;
            let page = self.pages.get_mut(p).ok_or(ReplayError::Full)?;
            if usize::from(page.len) < PAGE_SLOTS {
                page.push(k, until);
                return Ok(swept);
            }
            let gone = page.sweep(now);
            if gone > 0 {
                swept += gone;
                continue;
            }
            let d = page.depth;
            if d >= MAX_DEPTH {
                return Err(ReplayError::Full);
            }
            page.depth = d + 1;
            let mut moved = Page::new(d + 1);
            let mut i = 0;
            while i < usize::from(page.len) {
                let key = page.key(i);
                if (key.0[0] >> d) & 1 == 1 {
                    moved.push(key, page.until[i]);
                    page.remove(i);
                } else {
                    i += 1;
                }
            }
            if d == self.depth {
                self.dir.extend_from_within(..);
                self.depth += 1;
            }
            let q = u32::try_from(self.pages.len()).map_err(|_| ReplayError::Full)?;
            self.pages.push(moved);
            // The directory entries that led to the page and have bit d set.
            let low = (k.0[0] as usize) & ((1usize << d) - 1);
            let mut i = low | (1usize << d);
            while i < self.dir.len() {
                self.dir[i] = q;
                i += 1usize << (d + 1);
            }
        }
    }

    fn remove(&mut self, k: &Key) -> bool {
        match self.find(k) {
            Some((p, slot)) => {
                self.pages[p].remove(slot);
                true
            }
            None => false,
        }
    }

    fn sweep(&mut self, now: i64) -> usize {
        self.pages.iter_mut().map(|p| p.sweep(now)).sum()
    }

    fn bytes(&self) -> usize {
        self.pages.len() * std::mem::size_of::<Page>() + self.dir.capacity() * 4
    }
}

/// Shards, so that requests on many cores rarely meet on one lock.
const SHARDS: usize = 16;

/// The `jti`s of single-use tokens that were spent.
pub struct ReplayCache {
    shards: Vec<Mutex<Shard>>,
    hash_hi: RandomState,
    hash_lo: RandomState,
    /// Entries in all shards, expired ones not yet swept included: exact
    /// (changed under the shard's lock), so "full" is decided exactly once
    /// the expired ones are swept.
    held: AtomicU64,
    limit: u64,
    /// The second the whole memory was last swept, and how many sweeps
    /// ran. Expiry is counted in whole seconds, so a second sweep within
    /// one second finds nothing new (at most a token reserved in the
    /// second after it expired, which then waits for the next second's
    /// sweep: one second in which a full memory refuses, never admits,
    /// more). A full memory costs one sweep a second, not one per refused
    /// request.
    swept: Mutex<Swept>,
}

#[derive(Default)]
struct Swept {
    second: Option<i64>,
    sweeps: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every change to a shard (or the sweep's second) completes before its
    // lock is let go, and nothing in them panics: a poisoned one is used
    // as it is.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn until_s(expires_at: i64) -> u32 {
    u32::try_from(expires_at.max(0)).unwrap_or(u32::MAX)
}

impl ReplayCache {
    pub fn new(limit: u64) -> Self {
        ReplayCache {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hash_hi: RandomState::new(),
            hash_lo: RandomState::new(),
            held: AtomicU64::new(0),
            limit,
            swept: Mutex::new(Swept::default()),
        }
    }

    fn key(&self, iss: &str, jti: &str) -> Key {
        // `str`'s Hash ends each string with 0xff, which UTF-8 never holds:
        // no (iss, jti) pair hashes as another by concatenation.
        let hash = |s: &RandomState| {
            let mut h = s.build_hasher();
            iss.hash(&mut h);
            jti.hash(&mut h);
            h.finish()
        };
        let (hi, lo) = (hash(&self.hash_hi), hash(&self.hash_lo));
        Key([(hi >> 32) as u32, hi as u32, (lo >> 32) as u32])
    }

    fn shard(&self, k: &Key) -> &Mutex<Shard> {
        // Bits the directory does not use, so that a shard's keys spread.
        &self.shards[k.0[1] as usize % SHARDS]
    }

    /// Reserves `(iss, jti)` until `expires_at` (unix seconds, the last
    /// second the token could be accepted), or says why not.
    pub fn reserve(&self, iss: &str, jti: &str, expires_at: i64) -> Result<(), ReplayError> {
        self.reserve_key(
            self.key(iss, jti),
            expires_at,
            crate::common::now_s(),
            false,
        )
    }

    /// `force`: past the limit too (the rebuild: a spent jti is never
    /// forgotten; a memory over its limit refuses new tokens until enough
    /// have expired).
    fn reserve_key(
        &self,
        k: Key,
        expires_at: i64,
        now: i64,
        force: bool,
    ) -> Result<(), ReplayError> {
        let until = until_s(expires_at);
        for swept in [false, true] {
            let mut t = lock(self.shard(&k));
            if let Some((p, slot)) = t.find(&k) {
                let u = &mut t.pages[p].until[slot];
                if i64::from(*u) >= now {
                    return Err(ReplayError::Replayed);
                }
                // Its token has expired: the slot is taken again.
                *u = until;
                return Ok(());
            }
            // Counted before it is taken, so that two shards racing for
            // the last slot cannot both have it.
            let admitted = if force {
                self.held.fetch_add(1, Ordering::SeqCst);
                true
            } else {
                self.held
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |h| {
                        (h < self.limit).then_some(h + 1)
                    })
                    .is_ok()
            };
            if admitted {
                return match t.insert(k, until, now) {
                    Ok(gone) => {
                        self.held.fetch_sub(gone as u64, Ordering::SeqCst);
                        Ok(())
                    }
                    Err(e) => {
                        self.held.fetch_sub(1, Ordering::SeqCst);
                        Err(e)
                    }
                };
            }
            drop(t);
            if !swept {
                // Let expired entries leave before deciding.
                self.sweep(now);
            }
        }
        Err(ReplayError::Full)
    }

    /// Drops every entry whose token has expired, shard by shard, unless
    /// that was done already this second. Requests that find the memory
    /// full at once wait for the one sweep, then find it done.
    fn sweep(&self, now: i64) {
        let mut last = lock(&self.swept);
        if last.second.is_some_and(|s| s >= now) {
            return;
        }
        last.second = Some(now);
        last.sweeps += 1;
        for s in &self.shards {
            let gone = lock(s).sweep(now);
            self.held.fetch_sub(gone as u64, Ordering::SeqCst);
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
        let key = self.key(iss, jti);
        self.reserve_key(key, expires_at, crate::common::now_s(), false)?;
        Ok(Reservation {
            cache: self,
            key,
            spent: false,
        })
    }

    /// Gives a reservation back: the request was not forwarded.
    pub fn release(&self, iss: &str, jti: &str) {
        self.release_key(&self.key(iss, jti));
    }

    fn release_key(&self, k: &Key) {
        if lock(self.shard(k)).remove(k) {
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Tokens remembered and not yet expired (sweeps the expired).
    pub fn len(&self) -> u64 {
        self.sweep(crate::common::now_s());
        self.held.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the pages and directories take (what is allocated, not what
    /// is used), for the memory's own measurements.
    pub fn table_bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes()).sum()
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
    /// restored. Past the limit too: a spent jti is never forgotten.
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
                if until >= now
                    && self
                        .reserve_key(self.key(iss, jti), until, now, true)
                        .is_ok()
                {
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
    key: Key,
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
            self.cache.release_key(&self.key);
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

    /// The bound is exact when requests race for the last slots on many
    /// threads: exactly `limit` distinct tokens are accepted, never one more.
    #[test]
    fn the_limit_is_exact_under_concurrent_requests() {
        let c = std::sync::Arc::new(ReplayCache::new(1000));
        let exp = crate::common::now_s() + 600;
        let accepted: u64 = (0..8)
            .map(|t| {
                let c = c.clone();
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    for i in 0..400 {
                        match c.reserve("i", &format!("{t}-{i}"), exp) {
                            Ok(()) => ok += 1,
                            Err(e) => assert_eq!(e, ReplayError::Full),
                        }
                    }
                    ok
                })
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(accepted, 1000);
        assert_eq!(c.len(), 1000);
        // A released reservation frees exactly one slot.
        c.release("i", "0-0");
        c.release("i", "no-such-token");
        assert_eq!(c.len(), 999);
        assert!(c.reserve("i", "new", exp).is_ok());
        assert_eq!(c.reserve("i", "newer", exp), Err(ReplayError::Full));
    }

    /// A spent jti whose token expired gives its slot to a new token, and
    /// the bound counts it once.
    #[test]
    fn an_expired_entry_is_swept_before_the_memory_says_full() {
        let c = ReplayCache::new(2);
        let now = crate::common::now_s();
        let k = |j: &str| c.key("i", j);
        assert!(c.reserve_key(k("old"), now - 5, now - 10, false).is_ok());
        assert!(c.reserve_key(k("live"), now + 60, now, false).is_ok());
        // "old" expired: the full memory sweeps it and takes the new one.
        assert!(c.reserve_key(k("new"), now + 60, now, false).is_ok());
        assert_eq!(c.len(), 2);
        assert_eq!(
            c.reserve_key(k("more"), now + 60, now, false),
            Err(ReplayError::Full)
        );
        assert_eq!(
            c.reserve_key(k("live"), now + 60, now, false),
            Err(ReplayError::Replayed)
        );
    }

    /// A full memory sweeps itself once a second, however many requests
    /// it refuses: each sweep visits every entry, and one per refused
    /// request would make a full memory cost every caller a millisecond.
    #[test]
    fn a_full_memory_is_swept_once_a_second_not_once_a_request() {
        let c = ReplayCache::new(500);
        let now = crate::common::now_s();
        let k = |j: String| c.key("i", &j);
        // One of them can be accepted until `now` only.
        assert!(c.reserve_key(k("short".into()), now, now, false).is_ok());
        for i in 1..500 {
            assert!(
                c.reserve_key(k(format!("live-{i}")), now + 60, now, false)
                    .is_ok()
            );
        }
        let sweeps = || c.swept.lock().unwrap().sweeps;
        for i in 0..1000 {
            assert_eq!(
                c.reserve_key(k(format!("new-{i}")), now + 60, now, false),
                Err(ReplayError::Full)
            );
        }
        assert_eq!(sweeps(), 1);
        // The next second sweeps again, and what expired by then leaves.
        assert!(
            c.reserve_key(k("later".into()), now + 60, now + 1, false)
                .is_ok()
        );
        assert_eq!(sweeps(), 2);
    }

    /// At most 48 bytes per remembered jti: what the pages and directories
    /// allocate, checked all along from 20 000 on (below, the first page of
    /// each shard, 64 KiB in all, is most of it).
    /// (`cargo bench --bench replay_memory` reads the process's RSS.)
    #[test]
    fn a_remembered_jti_costs_at_most_48_bytes() {
        assert_eq!(std::mem::size_of::<Page>(), 4088);
        let n = 200_000u64;
        let c = ReplayCache::new(n);
        let exp = crate::common::now_s() + 600;
        let mut worst = 0.0f64;
        for i in 0..n {
            c.reserve("https://issuer.example", &format!("{i:036}"), exp)
                .unwrap();
            if i >= 20_000 && i % 97 == 0 {
                worst = worst.max(c.table_bytes() as f64 / (i + 1) as f64);
            }
        }
        assert!(worst <= 48.0, "{worst:.1} bytes per jti");
        assert!(worst > 16.0, "the measure counts the slots: {worst:.1}");
    }

    #[test]
    fn entries_leave_when_their_token_expires() {
        let c = ReplayCache::new(1);
        assert!(c.reserve("i", "old", crate::common::now_s()).is_ok());
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert_eq!(c.len(), 0);
        assert!(c.reserve("i", "new", crate::common::now_s() + 60).is_ok());
    }
}
