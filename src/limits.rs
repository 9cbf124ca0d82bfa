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
//!
//! Without `[shared_state]` all of it is per replica. With it,
//! [`Limits::admit`] asks the store ([`crate::shared`]) in one round trip,
//! the single-use `jti` included; while the store cannot answer, a
//! single-use token is refused (fail closed) and rates, quotas and the
//! pace are this replica's share (`limit / fallback_replicas`), counted
//! locally with every unit this replica spent today. The replica's own
//! cool-downs are always honoured too.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::shared::{self, SharedState, Verdict};

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
    /// The store says this single-use `jti` was spent (on any replica).
    Replayed,
    /// A single-use token while the store cannot be asked.
    SharedUnavailable {
        retry_after_s: u64,
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
    shared: Option<Arc<SharedState>>,
    /// The share divisor while the store is unavailable.
    fallback_replicas: u32,
}

/// What one request asks of this step.
pub struct Ask<'a> {
    pub project: &'a str,
    pub grants: &'a [GrantLimit],
    pub pace_per_s: Option<u32>,
    /// A single-use token: (iss, jti, held until in unix seconds). Its
    /// local reservation was taken already (`replay`).
    pub jti: Option<(&'a str, &'a str, i64)>,
    pub request_id: &'a str,
}

/// A request's admission: the quota units it took (and, with the shared
/// state, its jti there), given back on drop unless [`Admission::spend`]
/// said the request got as far as its durable attempt record.
pub struct Admission<'a> {
    quota: QuotaTaken<'a>,
    shared: Option<(Arc<SharedState>, shared::Refund)>,
    /// `shared` or `local` when `[shared_state]` is set.
    pub decided_by: Option<&'static str>,
}

impl Admission<'_> {
    pub fn spend(&mut self) {
        self.quota.spent = true;
        self.shared = None;
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some((store, refund)) = self.shared.take() {
            store.refund(refund);
        }
    }
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

    /// Limits shared through `store`, `fallback_replicas` dividing them
    /// while it is unavailable.
    pub fn shared(store: Arc<SharedState>, fallback_replicas: u32) -> Self {
        Limits {
            shared: Some(store),
            fallback_replicas: fallback_replicas.max(1),
            ..Self::default()
        }
    }

    pub fn store(&self) -> Option<&Arc<SharedState>> {
        self.shared.as_ref()
    }

    /// Cool-down, rates, quotas and the pace (and, with the shared state,
    /// the single-use `jti`): the request may go on, or why not.
    pub async fn admit<'a>(&'a self, ask: &Ask<'_>, now_s: i64) -> Result<Admission<'a>, Limited> {
        self.cooldown(ask.project)?;
        let Some(store) = &self.shared else {
            let quota = self.check(ask.grants, now_s, 1, true)?;
            self.pace(ask.project, ask.pace_per_s).await?;
            return Ok(Admission {
                quota,
                shared: None,
                decided_by: None,
            });
        };
        let rates: Vec<_> = ask
            .grants
            .iter()
            .filter_map(|g| {
                g.rate_per_minute
                    .map(|r| (g.team.as_str(), g.action, r.max(1)))
            })
            .collect();
        let quotas: Vec<_> = ask
            .grants
            .iter()
            .filter_map(|g| g.daily_quota.map(|q| (g.team.as_str(), g.action, q)))
            .collect();
        let shared_ask = shared::Ask {
            project: ask.project,
            rates,
            quotas,
            pace_per_s: ask.pace_per_s.filter(|p| *p > 0),
            jti: ask.jti,
            request_id: ask.request_id,
        };
        let secs = |d: Duration| ceil_secs(d).max(1);
        match store.admit(&shared_ask).await {
            Ok(Verdict::Admitted { wait, refund }) => {
                // This replica's own count too: its share while the store
                // is unavailable includes what it spent before.
                let quota = self.check(ask.grants, now_s, 1, false)?;
                let admission = Admission {
                    quota,
                    shared: Some((store.clone(), refund)),
                    decided_by: Some("shared"),
                };
                if !wait.is_zero() {
                    tokio::time::sleep(wait.min(MAX_PACING_WAIT)).await;
                }
                Ok(admission)
            }
            Ok(Verdict::Cooldown {
                retry_after,
                unavailable,
            }) => Err(Limited::Cooldown {
                retry_after_s: secs(retry_after),
                unavailable,
            }),
            Ok(Verdict::Replayed) => Err(Limited::Replayed),
            Ok(Verdict::Rate { index, retry_after }) => {
                let (team, _, per_minute) =
                    shared_ask.rates.get(index).copied().unwrap_or_default();
                Err(Limited::RateLimited {
                    retry_after_s: secs(retry_after),
                    detail: format!(
                        "rate_per_minute {per_minute} for team {team} on {}",
                        ask.project
                    ),
                })
            }
            Ok(Verdict::Quota { index, retry_after }) => {
                let (team, _, quota) = shared_ask.quotas.get(index).copied().unwrap_or_default();
                Err(Limited::QuotaExceeded {
                    retry_after_s: secs(retry_after),
                    detail: format!("daily_quota {quota} for team {team} on {}", ask.project),
                })
            }
            Ok(Verdict::Pace { retry_after }) => Err(Limited::RateLimited {
                retry_after_s: secs(retry_after),
                detail: format!(
                    "upstream_rate_per_s {} for project {}",
                    ask.pace_per_s.unwrap_or(0),
                    ask.project
                ),
            }),
            Err(shared::Unavailable) if ask.jti.is_some() => {
                store.count_fallback("single_use");
                Err(Limited::SharedUnavailable {
                    retry_after_s: ceil_secs(shared::breaker::PROBE_EVERY).max(1),
                })
            }
            Err(shared::Unavailable) => {
                store.count_fallback("local");
                let n = self.fallback_replicas;
                let quota = self.check(ask.grants, now_s, n, true)?;
                self.pace(ask.project, ask.pace_per_s.map(|p| (p / n).max(1)))
                    .await?;
                Ok(Admission {
                    quota,
                    shared: None,
                    decided_by: Some("local"),
                })
            }
        }
    }

    /// Batch said 429/503: this replica cools the project down, and with
    /// the shared state every replica does (awaited, bounded by the
    /// store's timeout, so that the next request anywhere sees it).
    pub async fn cool_down(
        &self,
        project: &str,
        status: u16,
        retry_after: Option<&str>,
    ) -> Option<Duration> {
        let d = self.start_cooldown(project, status, retry_after)?;
        if let Some(store) = &self.shared {
            store.extend_cooldown(project, d, status == 503).await;
        }
        Some(d)
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

    /// Rate limits, then quotas, of every grant that allows the request,
    /// each divided by `share`. Without `enforce` nothing is checked: the
    /// quota units are only counted (the store decided).
    pub fn check<'a>(
        &'a self,
        grants: &[GrantLimit],
        now_s: i64,
        share: u32,
        enforce: bool,
    ) -> Result<QuotaTaken<'a>, Limited> {
        let share = share.max(1);
        // The audit's detail says when a replica's share decided.
        let of_share = |limit: u64| {
            if share > 1 {
                format!(" (this replica's share {limit} while the shared state is unavailable)")
            } else {
                String::new()
            }
        };
        for g in grants {
            let Some(per_minute) = g.rate_per_minute.filter(|_| enforce) else {
                continue;
            };
            let per_minute = (per_minute / share).max(1);
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
                        "rate_per_minute {} for team {} on {}{}",
                        g.rate_per_minute.unwrap_or(per_minute),
                        g.team,
                        g.project,
                        of_share(u64::from(per_minute))
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
                if enforce && d.used >= quota / u64::from(share) {
                    // Units already taken by this request go back on drop.
                    return Err(Limited::QuotaExceeded {
                        retry_after_s: left,
                        detail: format!(
                            "daily_quota {quota} for team {} on {}{}",
                            g.team,
                            g.project,
                            of_share(quota / u64::from(share))
                        ),
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
        assert!(l.check(&g, 0, 1, true).is_ok());
        assert!(l.check(&g, 0, 1, true).is_ok());
        assert!(matches!(
            l.check(&g, 0, 1, true),
            Err(Limited::RateLimited { .. })
        ));
        let other = [GrantLimit {
            team: "ops".into(),
            ..grant(Some(2), None)
        }];
        assert!(l.check(&other, 0, 1, true).is_ok());
    }

    #[test]
    fn a_daily_quota_counts_forwarded_requests_and_resets_at_utc_midnight() {
        let l = Limits::new();
        let g = [grant(None, Some(2))];
        let day1 = 86_400 * 20_000 + 100;
        let mut a = l.check(&g, day1, 1, true).unwrap();
        a.spent = true;
        drop(a);
        // Not forwarded: the unit comes back.
        drop(l.check(&g, day1, 1, true).unwrap());
        let mut b = l.check(&g, day1, 1, true).unwrap();
        b.spent = true;
        drop(b);
        match l.check(&g, day1, 1, true) {
            Err(Limited::QuotaExceeded { retry_after_s, .. }) => assert_eq!(retry_after_s, 86_300),
            other => panic!("{:?}", other.map(|_| ())),
        }
        assert!(l.check(&g, day1 + 86_400, 1, true).is_ok());
    }
}
