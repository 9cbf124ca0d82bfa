//! A circuit breaker for the shared state: after [`OPEN_AFTER`] failures
//! in a row calls are not tried for [`PROBE_EVERY`], then one call probes;
//! its success closes the breaker, its failure opens it again. Requests
//! therefore do not each pay the timeout while the store is down
//! (envoyproxy/ratelimit#462, #978).

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const OPEN_AFTER: u32 = 3;
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One call is probing.
    Probing,
}

/// What a state change means to the caller (to log and count it once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

pub struct Breaker {
    state: Mutex<State>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }
}

impl Breaker {
    /// May a call be tried now? While open, one caller per
    /// [`PROBE_EVERY`] is let through as the probe.
    pub fn allow(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        match *s {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *s = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    pub fn success(&self) -> Change {
        let Ok(mut s) = self.state.lock() else {
            return Change::None;
        };
        let was_closed = matches!(*s, State::Closed { .. });
        *s = State::Closed { failures: 0 };
        if was_closed {
            Change::None
        } else {
            Change::Closed
        }
    }

    pub fn failure(&self) -> Change {
        let Ok(mut s) = self.state.lock() else {
            return Change::None;
        };
        let open = State::Open {
            until: Instant::now() + PROBE_EVERY,
        };
        match *s {
            State::Closed { failures } if failures + 1 >= OPEN_AFTER => {
                *s = open;
                Change::Opened
            }
            State::Closed { failures } => {
                *s = State::Closed {
                    failures: failures + 1,
                };
                Change::None
            }
            State::Probing | State::Open { .. } => {
                *s = open;
                Change::None
            }
        }
    }

    /// Calls are not being tried (open, or one probe in flight).
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| !matches!(*s, State::Closed { .. }))
            .unwrap_or(true)
    }

    /// The last call succeeded (closed, no failure since).
    pub fn is_clean(&self) -> bool {
        self.state
            .lock()
            .map(|s| *s == State::Closed { failures: 0 })
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_three_failures_in_a_row_and_lets_one_probe_through() {
        let b = Breaker::default();
        assert_eq!(b.failure(), Change::None);
        assert_eq!(b.success(), Change::None);
        assert_eq!(b.failure(), Change::None);
        assert_eq!(b.failure(), Change::None);
        assert!(b.allow(), "two failures in a row leave it closed");
        assert_eq!(b.failure(), Change::Opened);
        assert!(!b.allow(), "open: calls are not tried");
        assert!(b.is_open());
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert!(b.allow(), "the probe");
        assert!(!b.allow(), "only one probe at a time");
        assert_eq!(b.failure(), Change::None);
        assert!(!b.allow(), "a failed probe opens it again");
        std::thread::sleep(PROBE_EVERY + Duration::from_millis(20));
        assert!(b.allow());
        assert_eq!(b.success(), Change::Closed);
        assert!(b.allow() && b.allow());
        assert!(b.is_clean());
        b.failure();
        assert!(!b.is_clean(), "a failure since the last success");
    }
}
