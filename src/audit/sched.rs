//! How the syncer thread is scheduled: as a batch thread at a lower
//! priority than the request path (Linux), so that fsync waits never take
//! CPU from answering.

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
pub fn run_as_batch() {
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
pub fn current_nice() -> Option<i32> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").ok()?;
    stat_field(&stat, 19)?.parse().ok()
}

/// Field `n` (1-based, as in proc(5)) of a `/proc/.../stat` line; the
/// command name (field 2) may hold spaces and parentheses, so fields
/// after it are counted from its last `)`.
#[cfg(target_os = "linux")]
pub fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(n.checked_sub(3)?)
}
