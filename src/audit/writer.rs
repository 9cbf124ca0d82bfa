//! The writer of the audit file.
//!
//! Requests write their own records, under one lock: the first request to
//! append in a turn of the runtime yields once and then chains and writes
//! every record queued in that turn in one `write`. A syncer thread makes
//! them durable: one `fsync` covers every durable record written before it
//! started (group commit), while requests go on writing; the requests it
//! covered are answered together. A record that need not be durable (an
//! `outcome`, a `denied`) does not wait behind the syncer's `fsync`s. The
//! writer continues the chain from the file's last line at start, seals a
//! torn last line with a `repair` record, notices a live file that was
//! removed or replaced (and says so in a `repair` record in the new one),
//! rotates by size without ever replacing a file, removes files past their
//! retention with a `prune` record accounting for them, keeps the trail
//! within its size budget by refusing (never by deleting), counts denials
//! of unauthenticated requests past their budget into `summary` records,
//! signs `checkpoint` records on an interval and at shutdown, and mirrors
//! each line to stdout when asked.
//!
//! A rotation, step by step (each step durable before the next; a crash
//! between any two leaves a trail the next start continues):
//! 1. the live file `L` is synced (after a final checkpoint);
//! 2. files past their retention are accounted for by a `prune` record in
//!    `L`, synced, then removed;
//! 3. the next live file is written under the name `L.next`: its first
//!    record is a `rotate` record naming the file it follows, synced;
//! 4. `L` is linked as `L.<first seq>`: a link never replaces an existing
//!    name, so a taken name fails closed (a `repair` record, then 503s);
//! 5. `L.next` is renamed over `L` (whose records live on under the
//!    rotated name), and the folder is synced.
//!
//! At start, a leftover `L.next` is removed (step 5 never happened) and a
//! live file that is only a second name of its rotated file is unlinked
//! (step 4 happened, 5 did not); a live file that then holds no record
//! continues the chain from the newest rotated file, opening with a
//! `rotate` record of its own.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::file::{
    Span, folder_of, next_name, open_private, private_dir, pruned_state, read_tail, rotated_files,
    rotated_name, rotated_size, seq_of, span_of, sync_dir,
};
use super::keys::Signer;
use super::record::{Decision, Phase, PrunedThrough, Record, ZERO_HASH};
use super::sched::run_as_batch;
use crate::common::{now_rfc3339, rfc3339_millis};

/// The audit trail could not take a record.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    #[error("the audit file cannot be written")]
    Unavailable,
}

/// How the writer behaves beyond appending.
pub struct Options {
    /// Start a new file once the live one reaches this size.
    pub rotate_bytes: Option<u64>,
    /// Rotated files whose newest record is older than this are removed,
    /// accounted for by a `prune` record. `None`: never removed.
    pub retention: Option<Duration>,
    /// The trail's size budget (rotated files and the live one): a record
    /// of a request that would pass it is refused and the log turns
    /// unavailable until there is room. Nothing is ever deleted for it.
    pub max_total_bytes: Option<u64>,
    /// Denials of requests without a verified token recorded one by one
    /// per second; the rest are counted into one `summary` record.
    pub unauthenticated_per_s: u32,
    pub signer: Option<Arc<Signer>>,
    pub checkpoint_interval: Duration,
    /// Mirror each record on stdout.
    pub stdout: bool,
    /// Written into every record as `replica`.
    pub replica: Option<Arc<str>>,
    /// Most durable records one `fsync` answers for; 1 gives one fsync per
    /// durable record (for the benchmark that compares the two).
    pub max_batch: usize,
    /// Tests only: after this step of a rotation the writer stops touching
    /// any file, as if the process had been killed there.
    #[doc(hidden)]
    pub crash_after: Option<RotationStep>,
}

/// The steps of a rotation, for tests that crash between them.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotationStep {
    Synced,
    PruneRecorded,
    Pruned,
    NextWritten,
    Linked,
    Renamed,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotate_bytes: None,
            retention: None,
            max_total_bytes: None,
            unauthenticated_per_s: 20,
            signer: None,
            checkpoint_interval: Duration::from_secs(60),
            stdout: false,
            replica: None,
            max_batch: 4096,
            crash_after: None,
        }
    }
}

type Done = oneshot::Sender<Result<(), AuditError>>;
/// Requests' channels, each with its answer.
type Answers = Vec<(Done, Result<(), AuditError>)>;

/// Handle to the audit log. Cheap to clone; when the last clone is dropped
/// the syncer writes a final checkpoint and stops.
#[derive(Clone)]
pub struct AuditLog {
    handle: Arc<Handle>,
}

struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.lock().closing = true;
        self.0.wake.notify_one();
    }
}

/// The writer's state, shared by the requests (which append under the
/// lock) and the syncer thread (which makes appended records durable).
struct Shared {
    writer: Mutex<Writer>,
    /// The syncer sleeps here until there is something to sync or settle.
    wake: Condvar,
    available: Arc<AtomicBool>,
}

impl Shared {
    /// No code under this lock is expected to panic; should some ever
    /// do, the next caller takes the state as it is rather than panicking
    /// in turn: the request path never panics.
    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` under the lock and wakes the syncer when `f` left it work.
    fn with<R>(&self, f: impl FnOnce(&mut Writer) -> R) -> R {
        let mut w = self.lock();
        let out = f(&mut w);
        // A sleeping syncer also wakes to set a nearer timer (a summary
        // that is due at the end of this second).
        let wake = w.syncer_idle && (w.has_work() || std::mem::take(&mut w.retime));
        if wake {
            w.syncer_idle = false;
        }
        drop(w);
        if wake {
            self.wake.notify_one();
        }
        out
    }
}

/// A record waiting for the turn's write.
struct Queued {
    record: Record,
    durable: bool,
    done: Done,
}

/// Writes the queued records when dropped: after the leading request's
/// yield, or instead of it when that request is dropped.
struct WriteQueue<'a>(&'a Shared);

impl Drop for WriteQueue<'_> {
    fn drop(&mut self) {
        for (done, res) in self.0.with(Writer::write_queue) {
            let _ = done.send(res);
        }
    }
}

impl AuditLog {
    /// Starts the writer for `path`, creating its folder when missing. An
    /// unwritable path does not fail here: the log reports itself
    /// unavailable and retries on each request.
    pub fn open(path: PathBuf, opts: Options) -> Self {
        let available = Arc::new(AtomicBool::new(false));
        let mut writer = Writer {
            path,
            opts,
            file: None,
            identity: None,
            file_len: 0,
            file_first_seq: None,
            seq: 0,
            prev: ZERO_HASH.to_string(),
            since_checkpoint: 0,
            last_checkpoint: Instant::now(),
            failed_since: None,
            available: available.clone(),
            pending: Vec::new(),
            committed: Committed {
                prev: ZERO_HASH.to_string(),
                ..Committed::default()
            },
            queue: Vec::new(),
            write_scheduled: false,
            batch_failed: false,
            waiters: Vec::new(),
            settled: Vec::new(),
            syncer_idle: false,
            syncer_running: true,
            closing: false,
            rotate: false,
            started: false,
            rotated_bytes: 0,
            over_budget: false,
            budget_checked: Instant::now(),
            blocked: None,
            pruned_through: None,
            retention_checked: None,
            unauth: Unauth::default(),
            crashed: false,
            retime: false,
        };
        writer.ensure_open();
        let shared = Arc::new(Shared {
            writer: Mutex::new(writer),
            wake: Condvar::new(),
            available,
        });
        let relay = Relay::start();
        let syncer = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-syncer".into())
            .spawn(move || {
                run_as_batch();
                sync_loop(&syncer, &relay)
            });
        if spawned.is_err() {
            // Nothing could ever make a record durable: refuse everything.
            tracing::error!("cannot start the audit syncer thread");
            let mut w = shared.lock();
            w.syncer_running = false;
            w.available.store(false, Ordering::SeqCst);
        }
        AuditLog {
            handle: Arc::new(Handle(shared)),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.0
    }

    pub fn is_available(&self) -> bool {
        self.shared().available.load(Ordering::SeqCst)
    }

    /// Tries to (re)open the audit file, and looks again at what made it
    /// unusable (a full budget, a taken rotation name); true when records
    /// can be written.
    pub async fn recover(&self) -> bool {
        if self.is_available() {
            return true;
        }
        self.shared().with(|w| {
            if !w.syncer_running || w.crashed {
                return false;
            }
            w.recheck_budget();
            w.recheck_blocked();
            w.ensure_open();
            w.usable()
        })
    }

    /// Whether records are refused for `max_total_bytes`, and the trail's
    /// size in bytes (rotated files and the live one).
    pub fn budget_state(&self) -> (bool, u64) {
        let w = self.shared().lock();
        (w.over_budget, w.rotated_bytes + w.file_len)
    }

    /// Appends the denial of a request without a verified token, unless
    /// this second's `unauthenticated_per_s` were already recorded: then it
    /// is counted into the second's `summary` record (by reason and client
    /// address) and nothing is written now.
    pub async fn append_unauthenticated(
        &self,
        record: Record,
        reason: &'static str,
        addr: Option<IpAddr>,
    ) -> Result<(), AuditError> {
        let record_it = self.shared().with(|w| {
            if !w.syncer_running || !w.usable() {
                return Err(AuditError::Unavailable);
            }
            Ok(w.unauth_admit(reason, addr))
        })?;
        if record_it {
            self.append(record, false).await
        } else {
            Ok(())
        }
    }

    /// Appends `record`: chained and written to the file before this
    /// returns; with `durable`, answered only once an `fsync` covered it.
    ///
    /// The first request to append in a turn of the runtime writes for
    /// everyone: it yields once, so that the requests ready in the same
    /// turn add their records, and then writes them all in one `write`.
    pub async fn append(&self, record: Record, durable: bool) -> Result<(), AuditError> {
        let (done, answer) = oneshot::channel();
        let lead = self.shared().with(|w| {
            if !w.syncer_running {
                return Err(AuditError::Unavailable);
            }
            w.queue.push(Queued {
                record,
                durable,
                done,
            });
            Ok(!std::mem::replace(&mut w.write_scheduled, true))
        })?;
        if lead {
            // Should this request be dropped while it yields, the guard
            // writes the queue then: nobody is left waiting on it.
            let writes = WriteQueue(self.shared());
            tokio::task::yield_now().await;
            drop(writes);
        }
        answer.await.unwrap_or(Err(AuditError::Unavailable))
    }

    /// At shutdown: writes the summary of denials counted this second,
    /// then a signed checkpoint if a signing key is configured and records
    /// were written since the last one.
    pub async fn checkpoint(&self) -> bool {
        self.shared().with(|w| {
            w.write_summary();
            w.checkpoint_now()
        })
    }
}

/// The syncer: one `fsync` covers every durable record written before it
/// started (group commit), while requests go on appending; then the
/// waiting requests are answered, all at once. It also answers requests
/// settled by a file switch or failure, rotates, and writes timed
/// checkpoints.
fn sync_loop(shared: &Shared, relay: &Relay) {
    let mut w = shared.lock();
    loop {
        if !w.settled.is_empty() {
            let answers = std::mem::take(&mut w.settled);
            drop(w);
            relay.deliver(answers);
            w = shared.lock();
            continue;
        }
        if !w.waiters.is_empty() {
            let n = w.waiters.len().min(w.opts.max_batch.max(1));
            let round: Vec<Done> = w.waiters.drain(..n).collect();
            let file = w.file.clone();
            drop(w);
            let synced = file.as_ref().map(|f| f.sync_data());
            w = shared.lock();
            let res = match synced {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => {
                    // Only the live file's failure makes the log
                    // unavailable; a file already switched away from was
                    // synced when it was switched.
                    if let (Some(live), Some(f)) = (&w.file, &file)
                        && Arc::ptr_eq(live, f)
                    {
                        w.fail("fsync", &e);
                    }
                    Err(AuditError::Unavailable)
                }
                None => Err(AuditError::Unavailable),
            };
            w.maintain();
            drop(w);
            relay.deliver(round.into_iter().map(|d| (d, res.clone())).collect());
            w = shared.lock();
            continue;
        }
        if w.closing {
            // Counted denials of the last second are not lost at shutdown.
            w.write_summary();
            w.checkpoint_now();
            let answers = std::mem::take(&mut w.settled);
            drop(w);
            relay.deliver(answers);
            return;
        }
        w.maintain();
        if w.has_work() {
            continue;
        }
        let mut wait = if w.opts.signer.is_some() {
            w.opts
                .checkpoint_interval
                .saturating_sub(w.last_checkpoint.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        if w.opts.retention.is_some() {
            wait = wait.min(RETENTION_CHECK);
        }
        if w.unauth.count > 0 {
            // The second's summary is written once the second is over.
            wait = wait.min(until_next_second());
        }
        w.syncer_idle = true;
        w = match shared.wake.wait_timeout(w, wait) {
            Ok((g, _)) => g,
            Err(poisoned) => poisoned.into_inner().0,
        };
        w.syncer_idle = false;
    }
}

/// How the syncer answers the requests of a round: all of them in one
/// wake-up of the runtime they wait on. Completing each request's channel
/// from the syncer thread would wake a current-thread runtime once per
/// request (each one an `eventfd` write and a return from `epoll_wait`);
/// this wakes it once per round. Without a runtime (or once it is gone)
/// they are completed directly. On a current-thread runtime the relay runs
/// only while that runtime is driven: the log belongs to the runtime that
/// serves with it.
struct Relay(Option<tokio::sync::mpsc::UnboundedSender<Answers>>);

impl Relay {
    fn start() -> Relay {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Relay(None);
        };
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Answers>();
        rt.spawn(async move {
            while let Some(batch) = rx.recv().await {
                for (done, res) in batch {
                    let _ = done.send(res);
                }
            }
        });
        Relay(Some(tx))
    }

    fn deliver(&self, batch: Answers) {
        if batch.is_empty() {
            return;
        }
        let batch = match &self.0 {
            Some(tx) => match tx.send(batch) {
                Ok(()) => return,
                Err(unsent) => unsent.0,
            },
            None => batch,
        };
        for (done, res) in batch {
            let _ = done.send(res);
        }
    }
}

struct Writer {
    path: PathBuf,
    opts: Options,
    /// Shared with the syncer while it runs an `fsync` outside the lock.
    file: Option<Arc<File>>,
    /// (device, inode) of the open file, to notice it being replaced.
    identity: Option<(u64, u64)>,
    file_len: u64,
    file_first_seq: Option<u64>,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    last_checkpoint: Instant,
    /// When writing first failed, and why: the gap a `repair` record
    /// reports once writing works again.
    failed_since: Option<(String, String)>,
    available: Arc<AtomicBool>,
    /// Lines serialized but not yet written: a batch goes out in one
    /// `write`.
    pending: Vec<u8>,
    /// The chain state as of the last line that reached the file; restored
    /// when a line cannot be written.
    committed: Committed,
    /// Records appended in this turn of the runtime, not yet chained.
    queue: Vec<Queued>,
    /// A request will write the queue once the turn's others had theirs
    /// added.
    write_scheduled: bool,
    /// A write failed during the current batch.
    batch_failed: bool,
    /// Requests whose durable records are in the live file, waiting for an
    /// `fsync`, oldest first.
    waiters: Vec<Done>,
    /// Requests answered by a file switch or failure, for the syncer to
    /// deliver.
    settled: Answers,
    /// The syncer is asleep and must be woken for new work.
    syncer_idle: bool,
    /// False when no syncer thread could be started.
    syncer_running: bool,
    /// Every handle is gone: checkpoint and stop.
    closing: bool,
    /// The live file reached `rotate_bytes`: the syncer rotates it.
    rotate: bool,
    /// The chain's place was read from disk once; a later reopen (after a
    /// failure, or a removed file) keeps the chain state in memory.
    started: bool,
    /// Bytes of the rotated files (the live file is `file_len`).
    rotated_bytes: u64,
    /// A record was refused for `max_total_bytes`.
    over_budget: bool,
    budget_checked: Instant,
    /// Why the trail refuses records until someone looks (a rotation
    /// whose target name is taken).
    blocked: Option<PathBuf>,
    /// How far retention removed the chain's start.
    pruned_through: Option<PrunedThrough>,
    retention_checked: Option<Instant>,
    /// This second's unauthenticated denials.
    unauth: Unauth,
    /// A test's injected crash happened: no file is touched any more.
    crashed: bool,
    /// The syncer must look at its timer again (a summary became due).
    retime: bool,
}

/// How often a quiet trail looks for files past their retention.
const RETENTION_CHECK: Duration = Duration::from_secs(60);

/// Client addresses a summary tells apart in one second; more are
/// counted together as `other`.
const MAX_SUMMARY_ADDRS: usize = 4096;

/// The unauthenticated denials of one second.
#[derive(Default)]
struct Unauth {
    /// The second (unix time) these counts are for.
    second: i64,
    recorded: u32,
    count: u64,
    by_reason: BTreeMap<&'static str, u64>,
    by_addr: HashMap<IpAddr, u64>,
    other_addrs: u64,
}

fn unix_now() -> (i64, u32) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        d.subsec_millis(),
    )
}

fn until_next_second() -> Duration {
    let (_, ms) = unix_now();
    Duration::from_millis(u64::from(1000 - ms.min(999)) + 5)
}

fn second_rfc3339(s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(s)
        .map(rfc3339_millis)
        .unwrap_or_default()
}

/// Where the chain stood after the last successful write.
#[derive(Clone, Default)]
struct Committed {
    seq: u64,
    prev: String,
    file_len: u64,
    file_first_seq: Option<u64>,
    since_checkpoint: u64,
}

/// Past this, the batch buffer is given back after use.
const PENDING_KEEP_BYTES: usize = 1 << 20;

impl Writer {
    fn has_work(&self) -> bool {
        !self.waiters.is_empty() || !self.settled.is_empty() || self.closing || self.rotate
    }

    /// Answers every waiting request with `res`: their records' file was
    /// just synced under the lock, or failed.
    fn settle(&mut self, res: Result<(), AuditError>) {
        let waiters = std::mem::take(&mut self.waiters);
        self.settled
            .extend(waiters.into_iter().map(|d| (d, res.clone())));
    }

    /// The syncer's chores between rounds.
    fn maintain(&mut self) {
        self.timed_checkpoint();
        self.summary_if_due();
        self.maybe_rotate();
    }

    /// Chains the queued records and writes them in one go. Records that
    /// need not be durable are answered (returned) as soon as they are in
    /// the file; the others wait for the syncer's next `fsync`.
    fn write_queue(&mut self) -> Answers {
        self.write_scheduled = false;
        let queue = std::mem::take(&mut self.queue);
        if queue.is_empty() {
            return Vec::new();
        }
        self.check_identity();
        self.ensure_open();
        self.batch_failed = false;
        let results: Vec<_> = queue
            .into_iter()
            .map(|q| (q.done, q.durable, self.write(q.record)))
            .collect();
        let written = self.flush() && !self.batch_failed;
        // Rotating syncs the file, so it is the syncer's job; asked once
        // per write past the limit, so a rename that keeps failing is
        // retried, as before, without spinning.
        self.rotate = self
            .opts
            .rotate_bytes
            .is_some_and(|limit| self.file_len >= limit);
        let mut answers = Vec::with_capacity(results.len());
        for (done, durable, res) in results {
            let res = if written {
                res
            } else {
                Err(AuditError::Unavailable)
            };
            if durable && res.is_ok() {
                self.waiters.push(done);
            } else {
                answers.push((done, res));
            }
        }
        answers
    }

    fn fail(&mut self, what: &str, e: &std::io::Error) {
        if self.available.swap(false, Ordering::SeqCst) {
            tracing::error!(path = %self.path.display(), error = %e, "audit file {what} failed; refusing requests until it is writable");
        }
        if self.failed_since.is_none() {
            self.failed_since = Some((now_rfc3339(), format!("{what}: {e}")));
        }
        self.file = None;
        self.identity = None;
        self.roll_back();
        self.settle(Err(AuditError::Unavailable));
    }

    /// What was only buffered never reached the file: the chain goes on
    /// from the last line that did.
    fn roll_back(&mut self) {
        self.pending.clear();
        self.batch_failed = true;
        let c = self.committed.clone();
        self.seq = c.seq;
        self.prev = c.prev;
        self.file_len = c.file_len;
        self.file_first_seq = c.file_first_seq;
        self.since_checkpoint = c.since_checkpoint;
    }

    /// The chain state now matches the file.
    fn commit(&mut self) {
        self.committed = Committed {
            seq: self.seq,
            prev: self.prev.clone(),
            file_len: self.file_len,
            file_first_seq: self.file_first_seq,
            since_checkpoint: self.since_checkpoint,
        };
    }

    /// Records can be written: the file is open, within its budget, and no
    /// rotation is stuck on a taken name.
    fn usable(&self) -> bool {
        self.file.is_some() && !self.over_budget && self.blocked.is_none() && !self.crashed
    }

    /// Chains `rec` and adds its line to the batch buffer; [`flush`]
    /// writes the buffer (and [`sync`] flushes first). A checkpoint is
    /// signed here, over its own `seq`, `ts` and `head`. A request's
    /// record that would take the trail past `max_total_bytes` is refused.
    fn write(&mut self, mut rec: Record) -> Result<(), AuditError> {
        if self.file.is_none() || self.crashed {
            return Err(AuditError::Unavailable);
        }
        rec.seq = self.seq + 1;
        rec.ts = now_rfc3339();
        rec.prev = std::mem::take(&mut self.prev);
        rec.replica.clone_from(&self.opts.replica);
        if rec.phase == Phase::Checkpoint
            && let Some(signer) = &self.opts.signer
        {
            rec.sig = Some(signer.sign_checkpoint(rec.seq, &rec.ts, &rec.prev));
            rec.sig_format = Some(2);
            rec.head = Some(rec.prev.clone());
        }
        let start = self.pending.len();
        if serde_json::to_writer(&mut self.pending, &rec).is_err() {
            self.pending.truncate(start);
            self.prev = rec.prev;
            return Err(AuditError::Unavailable);
        }
        let line_len = (self.pending.len() - start) as u64 + 1;
        let budgeted = matches!(rec.phase, Phase::Denied | Phase::Attempt | Phase::Summary);
        if budgeted
            && let Some(max) = self.opts.max_total_bytes
            && self.rotated_bytes + self.file_len + line_len > max
        {
            self.pending.truncate(start);
            self.prev = rec.prev;
            self.refuse_over_budget(max);
            return Err(AuditError::Unavailable);
        }
        self.prev = hex::encode(Sha256::digest(&self.pending[start..]));
        self.pending.push(b'\n');
        self.seq += 1;
        self.file_len += line_len;
        self.file_first_seq.get_or_insert(self.seq);
        if rec.phase != Phase::Checkpoint {
            self.since_checkpoint += 1;
        }
        Ok(())
    }

    /// Writes the buffered lines in one go. False when they could not be
    /// written (the writer then fails over as for any write error).
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() {
            return true;
        }
        let Some(mut file) = self.file.as_deref() else {
            self.roll_back();
            return false;
        };
        if let Err(e) = file.write_all(&self.pending) {
            self.fail("write", &e);
            return false;
        }
        if self.opts.stdout {
            let _ = std::io::stdout().lock().write_all(&self.pending);
        }
        self.pending.clear();
        if self.pending.capacity() > PENDING_KEEP_BYTES {
            self.pending = Vec::new();
        }
        self.commit();
        true
    }

    /// Writes what is buffered and syncs the live file under the lock. The
    /// requests waiting on that file's records are answered by it: ok when
    /// it worked, refused (through [`fail`]) when it did not.
    fn sync(&mut self) -> bool {
        if !self.flush() {
            return false;
        }
        let Some(file) = self.file.as_deref() else {
            return false;
        };
        match file.sync_data() {
            Ok(()) => {
                self.settle(Ok(()));
                true
            }
            Err(e) => {
                self.fail("fsync", &e);
                false
            }
        }
    }

    fn timed_checkpoint(&mut self) {
        if self.last_checkpoint.elapsed() >= self.opts.checkpoint_interval {
            self.checkpoint_now();
        }
    }

    /// A signed checkpoint over the current head, when there is news since
    /// the last one. True when one was written (or none was needed).
    fn checkpoint_now(&mut self) -> bool {
        self.last_checkpoint = Instant::now();
        if self.opts.signer.is_none() || self.since_checkpoint == 0 {
            return true;
        }
        self.ensure_open();
        // `write` signs it, over its seq, ts and head.
        if self.write(Record::new(Phase::Checkpoint)).is_err() || !self.sync() {
            return false;
        }
        self.since_checkpoint = 0;
        true
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

mod budget;
mod open;
mod rotation;

#[cfg(test)]
mod tests;
