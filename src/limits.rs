//! Step 5 (last part): protect Batch and the company's one REST key.
//!
//! * Cool-down: after Batch answers 429 for a project, every caller of that
//!   project gets 429 `upstream_cooldown` for `max(5 s, Retry-After)` and
//!   nothing is sent; a 503 does the same with its own `Retry-After`
//!   (default 5 s) and answers 503.
//! * `rate_per_minute`: a token bucket per (team, project, action).
//! * `daily_quota`: a blast-radius cap per (team, project, action) and UTC
//!   day. A unit is taken when the request passes and given back if it is
//!   not forwarded after all.
//! * `upstream_rate_per_s` per project: requests wait up to 1 s for their
//!   turn, else 429.
//!
//! State outlives config reloads: counters are keyed by names, and the
//! limits themselves are read from the config each request runs under.
//! All of it is per replica.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Batch asks for at least 5 s after a 429.
const MIN_COOLDOWN: Duration = Duration::from_secs(5);
/// Longest cool-down a Retry-After may impose.
const MAX_COOLDOWN: Duration = Duration::from_secs(3600);
const MAX_PACING_WAIT: Duration = Duration::from_secs(1);

/// A refusal from this step, with the seconds to put in `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Limited {
    /// Batch said 429 (or 503 when `unavailable`) moments ago.
    Cooldown {
        retry_after_s: u64,
        unavailable: bool,
    },
    RateLimited {
        retry_after_s: u64,
        detail: String,
    },
    QuotaExceeded {
        retry_after_s: u64,
        detail: String,
    },
}

/// One limit of one grant that applies to a request.
#[derive(Debug, Clone)]
pub struct GrantLimit {
    pub team: String,
    pub project: String,
    pub action: &'static str,
    pub rate_per_minute: Option<u32>,
    pub daily_quota: Option<u64>,
}

impl GrantLimit {
    fn key(&self) -> String {
        format!("{}\u{1f}{}\u{1f}{}", self.team, self.project, self.action)
    }
}

struct Bucket {
    per_minute: u32,
    limiter: DefaultDirectRateLimiter,
}

#[derive(Default)]
struct Day {
    day: i64,
    used: u64,
}

/// Long-lived limit state.
#[derive(Default)]
pub struct Limits {
    cooldowns: Mutex<HashMap<String, (Instant, bool)>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    quotas: Mutex<HashMap<String, Day>>,
    pacers: Mutex<HashMap<String, (u32, std::sync::Arc<DefaultDirectRateLimiter>)>>,
}

/// Units of daily quota taken by a request; given back on drop unless the
/// request was forwarded.
pub struct QuotaTaken<'a> {
    limits: &'a Limits,
    keys: Vec<(String, i64)>,
    pub spent: bool,
}

impl Drop for QuotaTaken<'_> {
    fn drop(&mut self) {
        if self.spent {
            return;
        }
        if let Ok(mut q) = self.limits.quotas.lock() {
            for (k, day) in &self.keys {
                if let Some(d) = q.get_mut(k)
                    && d.day == *day
                {
                    d.used = d.used.saturating_sub(1);
                }
            }
        }
    }
}

fn utc_day_and_left(now_s: i64) -> (i64, u64) {
    let day = now_s.div_euclid(86_400);
    let left = 86_400 - now_s.rem_euclid(86_400);
    (day, u64::try_from(left).unwrap_or(86_400))
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Is `project` cooling down after Batch's 429/503?
    pub fn cooldown(&self, project: &str) -> Result<(), Limited> {
        let Ok(mut c) = self.cooldowns.lock() else {
            return Ok(());
        };
        match c.get(project).copied() {
            Some((until, unavailable)) if until > Instant::now() => Err(Limited::Cooldown {
                retry_after_s: ceil_secs(until - Instant::now()).max(1),
                unavailable,
            }),
            Some(_) => {
                c.remove(project);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records Batch's 429 or 503 for `project`. Returns the cool-down.
    pub fn start_cooldown(
        &self,
        project: &str,
        status: u16,
        retry_after: Option<&str>,
    ) -> Option<Duration> {
        let unavailable = match status {
            429 => false,
            503 => true,
            _ => return None,
        };
        let asked = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let d = match (unavailable, asked) {
            (false, a) => a.unwrap_or(MIN_COOLDOWN).max(MIN_COOLDOWN),
            (true, a) => a.unwrap_or(MIN_COOLDOWN),
        }
        .min(MAX_COOLDOWN);
        if let Ok(mut c) = self.cooldowns.lock() {
            c.insert(project.to_string(), (Instant::now() + d, unavailable));
        }
        Some(d)
    }

    /// Rate limits, then quotas, of every grant that allows the request.
    pub fn check<'a>(
        &'a self,
        grants: &[GrantLimit],
        now_s: i64,
    ) -> Result<QuotaTaken<'a>, Limited> {
        for g in grants {
            let Some(per_minute) = g.rate_per_minute else {
                continue;
            };
            let Ok(mut buckets) = self.buckets.lock() else {
                continue;
            };
            let bucket = buckets
                .entry(g.key())
                .and_modify(|b| {
                    if b.per_minute != per_minute {
                        *b = bucket(per_minute);
                    }
                })
                .or_insert_with(|| bucket(per_minute));
            if let Err(not_until) = bucket.limiter.check() {
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                return Err(Limited::RateLimited {
                    retry_after_s: ceil_secs(wait).max(1),
                    detail: format!(
                        "rate_per_minute {per_minute} for team {} on {}",
                        g.team, g.project
                    ),
                });
            }
        }
        let (day, left) = utc_day_and_left(now_s);
        let mut taken = QuotaTaken {
            limits: self,
            keys: vec![],
            spent: false,
        };
        if let Ok(mut q) = self.quotas.lock() {
            for g in grants {
                let Some(quota) = g.daily_quota else { continue };
                let d = q.entry(g.key()).or_default();
                if d.day != day {
                    *d = Day { day, used: 0 };
                }
                if d.used >= quota {
                    // Units already taken by this request go back on drop.
                    return Err(Limited::QuotaExceeded {
                        retry_after_s: left,
                        detail: format!("daily_quota {quota} for team {} on {}", g.team, g.project),
                    });
                }
                d.used += 1;
                taken.keys.push((g.key(), day));
            }
        }
        Ok(taken)
    }

    /// Waits for `project`'s upstream pace (at most 1 s).
    pub async fn pace(&self, project: &str, per_s: Option<u32>) -> Result<(), Limited> {
        let Some(per_s) = per_s.and_then(NonZeroU32::new) else {
            return Ok(());
        };
        let limiter = {
            let Ok(mut p) = self.pacers.lock() else {
                return Ok(());
            };
            let e = p.entry(project.to_string()).or_insert_with(|| {
                (
                    per_s.get(),
                    std::sync::Arc::new(RateLimiter::direct(Quota::per_second(per_s))),
                )
            });
            if e.0 != per_s.get() {
                *e = (
                    per_s.get(),
                    std::sync::Arc::new(RateLimiter::direct(Quota::per_second(per_s))),
                );
            }
            e.1.clone()
        };
        match tokio::time::timeout(MAX_PACING_WAIT, limiter.until_ready()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(Limited::RateLimited {
                retry_after_s: 1,
                detail: format!("upstream_rate_per_s {per_s} for project {project}"),
            }),
        }
    }
}

fn bucket(per_minute: u32) -> Bucket {
    let n = NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN);
    Bucket {
        per_minute,
        limiter: RateLimiter::direct(Quota::per_minute(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(rate: Option<u32>, quota: Option<u64>) -> GrantLimit {
        GrantLimit {
            team: "growth".into(),
            project: "marketing-prod".into(),
            action: "campaigns.delete",
            rate_per_minute: rate,
            daily_quota: quota,
        }
    }

    #[test]
    fn a_429_cools_the_project_down_for_at_least_5_seconds() {
        let l = Limits::new();
        assert_eq!(l.start_cooldown("p", 429, Some("1")), Some(MIN_COOLDOWN));
        assert_eq!(
            l.start_cooldown("p", 429, Some("30")),
            Some(Duration::from_secs(30))
        );
        assert!(matches!(
            l.cooldown("p"),
            Err(Limited::Cooldown {
                unavailable: false,
                retry_after_s: 30
            })
        ));
        assert!(l.cooldown("other").is_ok());
        assert_eq!(l.start_cooldown("q", 503, None), Some(MIN_COOLDOWN));
        assert!(matches!(
            l.cooldown("q"),
            Err(Limited::Cooldown {
                unavailable: true,
                ..
            })
        ));
        assert_eq!(l.start_cooldown("r", 500, Some("9")), None);
        assert_eq!(
            l.start_cooldown("s", 429, Some("999999")),
            Some(MAX_COOLDOWN)
        );
    }

    #[test]
    fn the_rate_limit_is_a_bucket_per_team_project_and_action() {
        let l = Limits::new();
        let g = [grant(Some(2), None)];
        assert!(l.check(&g, 0).is_ok());
        assert!(l.check(&g, 0).is_ok());
        assert!(matches!(l.check(&g, 0), Err(Limited::RateLimited { .. })));
        let other = [GrantLimit {
            team: "ops".into(),
            ..grant(Some(2), None)
        }];
        assert!(l.check(&other, 0).is_ok());
    }

    #[test]
    fn a_daily_quota_counts_forwarded_requests_and_resets_at_utc_midnight() {
        let l = Limits::new();
        let g = [grant(None, Some(2))];
        let day1 = 86_400 * 20_000 + 100;
        let mut a = l.check(&g, day1).unwrap();
        a.spent = true;
        drop(a);
        // Not forwarded: the unit comes back.
        drop(l.check(&g, day1).unwrap());
        let mut b = l.check(&g, day1).unwrap();
        b.spent = true;
        drop(b);
        match l.check(&g, day1) {
            Err(Limited::QuotaExceeded { retry_after_s, .. }) => assert_eq!(retry_after_s, 86_300),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(l.check(&g, day1 + 86_400).is_ok());
    }
}
