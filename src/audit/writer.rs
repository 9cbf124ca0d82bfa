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
//! rotates by size, prunes old files, signs `checkpoint` records on an
//! interval and at shutdown, and mirrors each line to stdout when asked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::{AuditError, Phase, Record, ZERO_HASH, now_rfc3339};

/// Longest line the writer will look for at the end of a file.
const MAX_LINE_BYTES: u64 = 1 << 20;

/// The Ed25519 key that signs checkpoints.
pub struct Signer(ring::signature::Ed25519KeyPair);

impl Signer {
    /// Reads an Ed25519 private key, PKCS#8 PEM.
    pub fn load(path: &Path) -> Result<Signer, String> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|_| format!("{} is not a PKCS#8 PEM private key", path.display()))?;
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map(Signer)
            .map_err(|_| format!("{} is not an Ed25519 private key", path.display()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Option<Signer> {
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .ok()
            .map(Signer)
    }

    /// base64url (unpadded) Ed25519 signature over `head`'s ASCII bytes.
    pub fn sign(&self, head: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.0.sign(head.as_bytes()).as_ref())
    }

    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.0.public_key().as_ref().to_vec()
    }
}

/// How the writer behaves beyond appending.
pub struct Options {
    /// Start a new file once the live one reaches this size.
    pub rotate_bytes: Option<u64>,
    /// Rotated files kept; older ones are removed.
    pub keep_files: usize,
    pub signer: Option<Arc<Signer>>,
    pub checkpoint_interval: Duration,
    /// Mirror each record on stdout.
    pub stdout: bool,
    /// Most durable records one `fsync` answers for; 1 gives one fsync per
    /// durable record (for the benchmark that compares the two).
    pub max_batch: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            rotate_bytes: None,
            keep_files: 30,
            signer: None,
            checkpoint_interval: Duration::from_secs(60),
            stdout: false,
            max_batch: 4096,
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
        let wake = w.syncer_idle && w.has_work();
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

    /// Tries to (re)open the audit file; true when it can be written.
    pub async fn recover(&self) -> bool {
        if self.is_available() {
            return true;
        }
        self.shared().with(|w| {
            if !w.syncer_running {
                return false;
            }
            w.ensure_open();
            w.file.is_some()
        })
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

    /// Writes a signed checkpoint now (at shutdown), if a signing key is
    /// configured and records were written since the last one.
    pub async fn checkpoint(&self) -> bool {
        self.shared().with(Writer::checkpoint_now)
    }
}

/// Schedules the calling thread (the syncer) as `SCHED_BATCH` at its
/// current nice value, so that its wake-ups (three per `fdatasync` on a
/// disk that needs the data, the inode and a flush) do not preempt the
/// request threads when they share a core: its next step waits until a
/// request thread blocks or its time slice ends, and the requests
/// arriving meanwhile join the next fsync. It keeps its fair share of the
/// CPU; only wake-up preemption is given up. Measured in
/// docs/performance.md (change 14): less CPU per request, and a lower p99
/// at 5 000 req/s, for a few per cent of closed-loop throughput.
/// Best effort: left as it is when the thread's nice value is not 0 (the
/// only value it can keep) or the call is refused.
fn run_as_batch() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadPriorityOsValue,
            ThreadSchedulePolicy, set_thread_priority_and_policy, thread_native_id,
        };
        if current_nice() != Some(0) {
            tracing::debug!("audit syncer keeps its scheduling policy: nice is not 0");
            return;
        }
        let result = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Os(ThreadPriorityOsValue::default()),
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Batch),
        );
        if let Err(e) = result {
            tracing::debug!("audit syncer keeps its scheduling policy: {e:?}");
        }
    }
}

/// The calling thread's nice value, from `/proc/thread-self/stat`.
#[cfg(target_os = "linux")]
fn current_nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    stat_field(&stat, 19)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/.../stat` line; the
/// command name (field 2) may hold spaces and parentheses, so fields
/// after it are counted from its last `)`.
#[cfg(target_os = "linux")]
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
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
        let wait = if w.opts.signer.is_some() {
            w.opts
                .checkpoint_interval
                .saturating_sub(w.last_checkpoint.elapsed())
        } else {
            Duration::from_secs(3600)
        };
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

    fn ensure_open(&mut self) {
        if self.file.is_some() {
            return;
        }
        if let Err(e) = self.open_and_seal() {
            self.fail("open", &e);
            return;
        }
        // After a failure, writing is proven by writing: the gap is
        // recorded, durably, before anything else is accepted.
        if let Some((since, error)) = self.failed_since.clone() {
            let mut rec = Record::new(Phase::Repair);
            rec.reason = Some("unwritable".into());
            rec.found = Some(serde_json::json!({ "since": since, "error": error }));
            if self.write(rec).is_err() || !self.sync() {
                return;
            }
            self.failed_since = None;
        }
        if !self.available.swap(true, Ordering::SeqCst) {
            tracing::info!(path = %self.path.display(), seq = self.seq, "audit file open");
        }
    }

    /// The live file was removed or replaced under us: writing on would
    /// put records where nobody finds them. Reopen, and say so.
    fn check_identity(&mut self) {
        let Some(ours) = self.identity else { return };
        let now = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if now == Some(ours) {
            return;
        }
        tracing::error!(path = %self.path.display(), "the audit file was removed or replaced; continuing the chain in a new file");
        // What was written to it still counts: make it durable (answering
        // whoever waits on it) before letting go of it.
        if !self.sync() {
            return;
        }
        self.file = None;
        self.identity = None;
        self.ensure_open();
        let mut rec = Record::new(Phase::Repair);
        rec.reason = Some("file_replaced".into());
        rec.found = Some(serde_json::json!({
            "missing_file": self.path.display().to_string(),
            "last_seq_before": self.seq,
        }));
        if self.write(rec).is_ok() {
            self.sync();
        }
    }

    /// Opens the file for append and continues the chain from its last
    /// line. A torn last line (a crash mid-write) is cut off and sealed by
    /// a `repair` record saying what was found.
    fn open_and_seal(&mut self) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        let tail = read_tail(&mut file)?;
        if let Some(last) = &tail.last_line {
            let seq = serde_json::from_slice::<serde_json::Value>(last)
                .ok()
                .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
                .ok_or_else(|| std::io::Error::other("the last complete audit line has no seq"))?;
            self.seq = seq;
            self.prev = hex::encode(Sha256::digest(last));
        }
        self.file_first_seq = first_seq(&mut file)?;
        self.file_len = meta.len() - tail.torn.len() as u64;
        self.identity = Some((meta.dev(), meta.ino()));
        self.commit();
        if !tail.torn.is_empty() {
            file.set_len(self.file_len)?;
            file.sync_data()?;
            self.file = Some(Arc::new(file));
            let mut rec = Record::new(Phase::Repair);
            rec.reason = Some("torn_last_line".into());
            rec.found = Some(serde_json::json!({
                "torn_bytes": tail.torn.len(),
                "torn_sha256": hex::encode(Sha256::digest(&tail.torn)),
                "torn_text": String::from_utf8_lossy(&tail.torn),
            }));
            self.write(rec)
                .map_err(|_| std::io::Error::other("repair write"))?;
            if !self.sync() {
                return Err(std::io::Error::other("repair fsync"));
            }
            tracing::warn!(
                bytes = tail.torn.len(),
                "audit file ended in a torn line; sealed it with a repair record"
            );
            return Ok(());
        }
        self.file = Some(Arc::new(file));
        Ok(())
    }

    /// Chains `rec` and adds its line to the batch buffer; [`flush`]
    /// writes the buffer (and [`sync`] flushes first).
    fn write(&mut self, mut rec: Record) -> Result<(), AuditError> {
        if self.file.is_none() {
            return Err(AuditError::Unavailable);
        }
        rec.seq = self.seq + 1;
        rec.ts = now_rfc3339();
        rec.prev = std::mem::take(&mut self.prev);
        let start = self.pending.len();
        if serde_json::to_writer(&mut self.pending, &rec).is_err() {
            self.pending.truncate(start);
            self.prev = rec.prev;
            return Err(AuditError::Unavailable);
        }
        self.prev = hex::encode(Sha256::digest(&self.pending[start..]));
        self.pending.push(b'\n');
        self.seq += 1;
        self.file_len += (self.pending.len() - start) as u64;
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
        let Some(signer) = self.opts.signer.clone() else {
            return true;
        };
        if self.since_checkpoint == 0 {
            return true;
        }
        self.ensure_open();
        let mut rec = Record::new(Phase::Checkpoint);
        rec.sig = Some(signer.sign(&self.prev));
        rec.head = Some(self.prev.clone());
        if self.write(rec).is_err() || !self.sync() {
            return false;
        }
        self.since_checkpoint = 0;
        true
    }

    /// Past `rotate_bytes`: seal the file with a checkpoint, rename it
    /// `<file>.<first seq, 12 digits>`, start a new one, prune old ones.
    fn maybe_rotate(&mut self) {
        self.rotate = false;
        let Some(limit) = self.opts.rotate_bytes else {
            return;
        };
        if self.file.is_none() || self.file_len < limit {
            return;
        }
        self.checkpoint_now();
        // Records waiting for an fsync are in this file: sync it (answering
        // them) before it is renamed and let go of.
        if !self.sync() {
            return;
        }
        let Some(first) = self.file_first_seq else {
            return;
        };
        let rotated = PathBuf::from(format!("{}.{first:012}", self.path.display()));
        if let Err(e) = std::fs::rename(&self.path, &rotated) {
            tracing::error!(error = %e, "audit rotation failed; the live file keeps growing");
            return;
        }
        if let Some(dir) = self.path.parent() {
            // The rename is durable once the folder is.
            if let Ok(d) = File::open(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                let _ = d.sync_all();
            }
        }
        self.file = None;
        self.identity = None;
        self.file_first_seq = None;
        self.file_len = 0;
        self.ensure_open();
        tracing::info!(rotated = %rotated.display(), "audit file rotated");
        self.prune();
    }

    fn prune(&self) {
        let mut rotated = rotated_files(&self.path);
        while rotated.len() > self.opts.keep_files {
            let oldest = rotated.remove(0);
            match std::fs::remove_file(&oldest) {
                Ok(()) => {
                    tracing::info!(removed = %oldest.display(), "old audit file removed (keep_files)")
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %oldest.display(), "cannot remove an old audit file")
                }
            }
        }
    }
}

/// The rotated files of the live file `path`, oldest first.
pub fn rotated_files(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return vec![];
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{name}.");
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix(&prefix))
                        .is_some_and(|s| s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

fn first_seq(file: &mut File) -> std::io::Result<Option<u64>> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    file.take(MAX_LINE_BYTES).read_to_end(&mut buf)?;
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    Ok(serde_json::from_slice::<serde_json::Value>(line)
        .ok()
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64)))
}

struct Tail {
    last_line: Option<Vec<u8>>,
    torn: Vec<u8>,
}

/// The last complete line of `file` and any bytes after it.
fn read_tail(file: &mut File) -> std::io::Result<Tail> {
    let len = file.metadata()?.len();
    let start = len.saturating_sub(2 * MAX_LINE_BYTES);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.take(len - start).read_to_end(&mut buf)?;
    let torn_from = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if start > 0 && torn_from == 0 {
        return Err(std::io::Error::other(
            "no line end in the audit file's tail",
        ));
    }
    let torn = buf[torn_from..].to_vec();
    let body = &buf[..torn_from.saturating_sub(1)];
    let line_start = body.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let last = &body[line_start..];
    Ok(Tail {
        last_line: (torn_from > 0 && !last.is_empty()).then(|| last.to_vec()),
        torn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail_of(content: &[u8]) -> (Option<Vec<u8>>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.jsonl");
        std::fs::write(&p, content).unwrap();
        let mut f = File::open(&p).unwrap();
        let t = read_tail(&mut f).unwrap();
        (t.last_line, t.torn)
    }

    #[test]
    fn the_tail_is_the_last_complete_line_and_any_torn_bytes() {
        assert_eq!(tail_of(b""), (None, vec![]));
        assert_eq!(tail_of(b"a\nbb\n"), (Some(b"bb".to_vec()), vec![]));
        assert_eq!(
            tail_of(b"a\nbb\ncc"),
            (Some(b"bb".to_vec()), b"cc".to_vec())
        );
        assert_eq!(tail_of(b"only-torn"), (None, b"only-torn".to_vec()));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 3";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 4), Some("1"));
        assert_eq!(stat_field(stat, 19), Some("0"));
        assert_eq!(stat_field(stat, 18), Some("20"));
        assert_eq!(stat_field(stat, 2), None);
        assert_eq!(stat_field("no command name", 3), None);
    }

    /// The syncer runs as SCHED_BATCH (policy 3 in proc(5)'s field 41)
    /// at the nice value it had, both for a thread that calls
    /// `run_as_batch` and for the syncers `AuditLog::open` starts.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_syncer_runs_as_sched_batch_at_its_nice_value() {
        fn policy_and_nice(stat: &str) -> (String, String) {
            (
                stat_field(stat, 41).unwrap().to_string(),
                stat_field(stat, 19).unwrap().to_string(),
            )
        }
        let own = || std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let (before, after) = std::thread::spawn(move || {
            let before = policy_and_nice(&own());
            run_as_batch();
            (before, policy_and_nice(&own()))
        })
        .join()
        .unwrap();
        assert_eq!(after.1, before.1, "the nice value is kept");
        if before.1 == "0" {
            assert_eq!(after.0, "3", "SCHED_BATCH");
        } else {
            assert_eq!(after.0, before.0, "left alone at nice {}", before.1);
        }

        let dir = tempfile::tempdir().unwrap();
        let _log = AuditLog::open(dir.path().join("audit.jsonl"), Options::default());
        // The syncer names itself and sets its policy as it starts;
        // syncers of other tests in this process may be starting too, so
        // wait until one is seen and every one seen has.
        let syncers = || -> Vec<(String, String)> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| {
                    let t = t.ok()?.path();
                    let comm = std::fs::read_to_string(t.join("comm")).ok()?;
                    (comm.trim() == "audit-syncer")
                        .then(|| std::fs::read_to_string(t.join("stat")).ok())
                        .flatten()
                        .map(|s| policy_and_nice(&s))
                })
                .collect()
        };
        let want = (after.0.clone(), before.1.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = syncers();
            if !seen.is_empty() && seen.iter().all(|s| *s == want) {
                break;
            }
            assert!(Instant::now() < deadline, "{seen:?}, want {want:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn a_batch_that_cannot_be_written_leaves_the_chain_where_the_file_ends() {
        use crate::audit::verify::{VerifyOptions, verify};
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        let log = AuditLog::open(live.clone(), Options::default());
        log.append(Record::new(Phase::Denied), true).await.unwrap();
        // The file moves away and the path now fails every write (ENOSPC):
        // the writer notices, and its repair record and both appends are
        // buffered, chained and then refused by the disk.
        let first = dir.path().join("audit.jsonl.000000000001");
        std::fs::rename(&live, &first).unwrap();
        std::os::unix::fs::symlink("/dev/full", &live).unwrap();
        assert!(log.append(Record::new(Phase::Denied), false).await.is_err());
        assert!(log.append(Record::new(Phase::Attempt), true).await.is_err());
        // Space comes back as an empty file: the chain must go on from the
        // last line that reached a disk, not from the refused ones.
        std::fs::remove_file(&live).unwrap();
        assert!(log.recover().await);
        log.append(Record::new(Phase::Denied), true).await.unwrap();
        drop(log);
        let v = verify(&[first, live], &VerifyOptions::default()).unwrap();
        assert_eq!((v.first_seq, v.last_seq), (Some(1), Some(v.records)));
        assert!(
            v.repairs.iter().any(|(_, r)| r == "unwritable"),
            "{:?}",
            v.repairs
        );
    }

    /// Answers go through a task on the runtime the log was opened on;
    /// without one, or once that runtime is gone, the writer answers
    /// directly. No request is left waiting either way.
    #[test]
    fn every_append_is_answered_with_or_without_the_relay_task() {
        let dir = tempfile::tempdir().unwrap();
        let rt = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let append = |rt: &tokio::runtime::Runtime, log: &AuditLog| {
            rt.block_on(async {
                let a = log.append(Record::new(Phase::Attempt), true);
                let b = log.append(Record::new(Phase::Outcome), false);
                let (a, b) = tokio::join!(a, b);
                a.and(b)
            })
        };
        // Opened on a runtime: the relay answers.
        let first = rt();
        let log = first
            .block_on(async { AuditLog::open(dir.path().join("a.jsonl"), Options::default()) });
        assert!(log.is_available());
        assert!(append(&first, &log).is_ok());
        // That runtime shuts down, and its relay task with it: answered
        // directly, awaited on another runtime.
        drop(first);
        assert!(append(&rt(), &log).is_ok());
        // Opened with no runtime at all.
        let bare = AuditLog::open(dir.path().join("b.jsonl"), Options::default());
        assert!(append(&rt(), &bare).is_ok());
        drop((log, bare));
        for (file, n) in [("a.jsonl", 4), ("b.jsonl", 2)] {
            let v = crate::audit::verify::verify(
                &[dir.path().join(file)],
                &crate::audit::verify::VerifyOptions::default(),
            )
            .unwrap();
            assert_eq!(v.records, n, "{file}");
        }
    }

    /// The request that leads a turn's write may be dropped while it
    /// yields (its client went away): the records queued behind it are
    /// written all the same, and their requests answered.
    #[tokio::test]
    async fn a_dropped_leader_still_writes_the_turn_for_the_others() {
        use std::future::Future;
        use std::task::{Context, Waker};
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path().join("a.jsonl"), Options::default());
        let mut cx = Context::from_waker(Waker::noop());
        let mut leader = Box::pin(log.append(Record::new(Phase::Denied), false));
        assert!(
            leader.as_mut().poll(&mut cx).is_pending(),
            "the leader yields"
        );
        let mut follower = Box::pin(log.append(Record::new(Phase::Attempt), true));
        assert!(follower.as_mut().poll(&mut cx).is_pending());
        drop(leader);
        let answered = tokio::time::timeout(Duration::from_secs(10), follower).await;
        assert!(matches!(answered, Ok(Ok(()))), "{answered:?}");
        // Both records reached the file, chained.
        let v = crate::audit::verify::verify(
            &[dir.path().join("a.jsonl")],
            &crate::audit::verify::VerifyOptions::default(),
        )
        .unwrap();
        assert_eq!(v.records, 2);
        // The next turn has a leader of its own.
        log.append(Record::new(Phase::Denied), false).await.unwrap();
    }

    /// 40 requests on four worker threads append ten records each, one
    /// after the other, as requests do: an attempt (durable), then an
    /// outcome. Each must be answered. The files, oldest first.
    async fn concurrent_appends(dir: &Path, opts: Options) -> Vec<PathBuf> {
        let path = dir.join("a.jsonl");
        let log = AuditLog::open(path.clone(), opts);
        let tasks: Vec<_> = (0..40u64)
            .map(|t| {
                let log = log.clone();
                tokio::spawn(async move {
                    for i in 0..10 {
                        let mut rec = Record::new(if i % 2 == 0 {
                            Phase::Attempt
                        } else {
                            Phase::Outcome
                        });
                        rec.request_id = Some(format!("r{t}-{i}").into());
                        log.append(rec, i % 2 == 0).await?;
                    }
                    Ok::<(), AuditError>(())
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(log);
        let mut files = rotated_files(&path);
        files.push(path);
        files
    }

    /// Every record is in the files exactly once, and the chain holds.
    fn assert_one_chain_of_400(files: &[PathBuf]) {
        let v =
            crate::audit::verify::verify(files, &crate::audit::verify::VerifyOptions::default())
                .unwrap();
        assert_eq!((v.first_seq, v.last_seq), (Some(1), Some(400)));
        let mut ids: Vec<String> = files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap()
                    .lines()
                    .map(|l| {
                        let r: serde_json::Value = serde_json::from_str(l).unwrap();
                        r["request_id"].as_str().unwrap().to_string()
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_appends_from_many_threads_form_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let files = concurrent_appends(dir.path(), Options::default()).await;
        assert_eq!(files.len(), 1);
        assert_one_chain_of_400(&files);
    }

    /// The same with a file rotated every few records, so that rotations
    /// land while durable records wait for their fsync: every request is
    /// still answered, and the chain runs across the files.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn rotation_under_concurrent_appends_keeps_one_chain() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            rotate_bytes: Some(2048),
            keep_files: 1000,
            ..Options::default()
        };
        let files = concurrent_appends(dir.path(), opts).await;
        assert!(files.len() >= 3, "{} files", files.len());
        assert_one_chain_of_400(&files);
    }

    #[test]
    fn rotated_files_are_found_oldest_first_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        for name in [
            "audit.jsonl",
            "audit.jsonl.000000000101",
            "audit.jsonl.000000000001",
            "audit.jsonl.1",
            "other.000000000001",
        ] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        let names: Vec<String> = rotated_files(&live)
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            ["audit.jsonl.000000000001", "audit.jsonl.000000000101"]
        );
    }
}
