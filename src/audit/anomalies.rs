//! What looks unusual in a trail, each finding with the records behind it.
//!
//! A [`Detector`] sees every record once, in the merged order of the
//! chains, the period's and those before it (the history a "first time"
//! or a "trailing median" needs). Its memory is bounded: counts per team
//! and day, the set of (caller, project) pairs seen (at most
//! [`MAX_SEEN`]), and at most [`MAX_REFS`] records per finding.
//!
//! How each is decided:
//! * `first_seen_caller`: a delete forwarded for a (caller `iss`+`sub`,
//!   project) the trail never showed before. The baseline is the trail
//!   before the period; when the trail starts inside the period, its
//!   first 24 hours (else everything would be new).
//! * `daily_spike`: a team's 2xx deletions on a day of the period at least
//!   [`SPIKE_MIN`] and more than [`SPIKE_FACTOR`] × the median of its
//!   previous [`TRAILING_DAYS`] days (zeros included, median at least 1),
//!   when the team's history reaches back [`MIN_HISTORY_DAYS`] days.
//! * `limit_refusal`: `rate_limited` and `quota_exceeded` refusals, per
//!   reason and team.
//! * `replay_or_binding`: `token_replayed` and `token_binding_mismatch`
//!   refusals, per reason and caller.
//! * `signature_burst`: a minute with at least [`SIG_BURST`] refusals whose
//!   detail is `bad_signature`.
//! * `stale_secret`: a delete sent with a secret served stale (the backend
//!   was failing), per project.
//! * `outside_working_hours`: a 2xx deletion outside `--working-hours`
//!   (UTC), per team.
//! * `batch_error_streak`: at least [`STREAK_MIN`] outcomes in a row where
//!   Batch answered 429 or 5xx (any other answer ends the streak).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;
use time::{OffsetDateTime, Weekday};

pub const MAX_SEEN: usize = 100_000;
pub const MAX_REFS: usize = 50;
pub const SPIKE_MIN: u64 = 5;
pub const SPIKE_FACTOR: u64 = 3;
pub const TRAILING_DAYS: i64 = 14;
pub const MIN_HISTORY_DAYS: i64 = 7;
pub const SIG_BURST: u64 = 10;
pub const STREAK_MIN: u64 = 3;
/// Bursts and streaks listed at most (the largest kept): a week-long flood
/// of forgeries is a handful of findings, not ten thousand.
pub const MAX_FINDINGS_PER_KIND: usize = 100;

/// One record behind a finding.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RecordRef {
    pub replica: String,
    pub seq: u64,
    pub ts: String,
    pub request_id: String,
}

/// One finding.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Anomaly {
    pub kind: &'static str,
    /// What it is about: a team, a caller and project, a minute…
    pub subject: String,
    /// Records behind it (all of them, though at most [`MAX_REFS`] are listed).
    pub count: u64,
    pub records: Vec<RecordRef>,
}

/// `--working-hours`: `HH:MM-HH:MM`, optionally after a day range
/// (`Mon-Fri 08:00-19:00`), UTC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingHours {
    days: Option<(u8, u8)>,
    start_min: u16,
    end_min: u16,
}

impl std::str::FromStr for WorkingHours {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?}: expected HH:MM-HH:MM, optionally after a day range (Mon-Fri 08:00-19:00), UTC"
            )
        };
        let (days, hours) = match s.trim().split_once(' ') {
            Some((d, h)) => {
                let (a, b) = d.split_once('-').ok_or_else(bad)?;
                (
                    Some((weekday(a).ok_or_else(bad)?, weekday(b).ok_or_else(bad)?)),
                    h,
                )
            }
            None => (None, s.trim()),
        };
        let (a, b) = hours.split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Option<u16> {
            let (h, m) = t.split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start_min, end_min) = (minutes(a).ok_or_else(bad)?, minutes(b).ok_or_else(bad)?);
        if start_min >= end_min {
            return Err(bad());
        }
        Ok(WorkingHours {
            days,
            start_min,
            end_min,
        })
    }
}

fn weekday(s: &str) -> Option<u8> {
    let all = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    all.iter()
        .position(|d| s.eq_ignore_ascii_case(d))
        .and_then(|i| u8::try_from(i).ok())
}

impl WorkingHours {
    pub fn contains(&self, at: OffsetDateTime) -> bool {
        let day = match at.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let day_ok = self.days.is_none_or(|(a, b)| {
            if a <= b {
                (a..=b).contains(&day)
            } else {
                day >= a || day <= b
            }
        });
        let m = u16::from(at.hour()) * 60 + u16::from(at.minute());
        day_ok && m >= self.start_min && m < self.end_min
    }
}

#[derive(Default)]
struct Finding {
    count: u64,
    records: Vec<RecordRef>,
}

impl Finding {
    fn add(&mut self, r: RecordRef) {
        self.count += 1;
        if self.records.len() < MAX_REFS {
            self.records.push(r);
        }
    }
}

/// Sees records one by one and says what looks unusual.
#[derive(Default)]
pub struct Detector {
    working_hours: Option<WorkingHours>,
    history_before_period: bool,
    /// The first record's time: without history before the period, the
    /// trail's first day is the baseline.
    trail_start: Option<OffsetDateTime>,
    seen: HashSet<(String, String)>,
    /// (team, day number) → 2xx deletions, over the whole trail.
    per_team_day: BTreeMap<(String, i64), u64>,
    /// Deletions of days in the period, for the spike findings.
    period_days: BTreeMap<(String, i64), Finding>,
    pending: BTreeMap<String, (String, String, RecordRef, bool)>,
    findings: BTreeMap<(&'static str, String), Finding>,
    /// The minute being counted for a signature burst (records come in
    /// `ts` order, so a minute is done when the next begins).
    sig_minute: Option<(String, Finding)>,
    sig_bursts: Vec<Anomaly>,
    streak: Finding,
    streaks: Vec<Anomaly>,
}

fn s<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn team_of(rec: &Value) -> String {
    match rec.get("caller").and_then(|c| c.get("team")) {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}

fn reference(rec: &Value) -> RecordRef {
    RecordRef {
        replica: s(rec, &["replica"]).unwrap_or("-").to_string(),
        seq: rec.get("seq").and_then(Value::as_u64).unwrap_or(0),
        ts: s(rec, &["ts"]).unwrap_or("-").to_string(),
        request_id: s(rec, &["request_id"]).unwrap_or("-").to_string(),
    }
}

fn parse_ts(ts: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
}

/// Adds `a` to `list`, keeping the [`MAX_FINDINGS_PER_KIND`] largest.
fn keep_largest(list: &mut Vec<Anomaly>, a: Anomaly) {
    if list.len() < MAX_FINDINGS_PER_KIND {
        list.push(a);
    } else if let Some((i, smallest)) = list.iter().enumerate().min_by_key(|(_, x)| x.count)
        && smallest.count < a.count
    {
        list[i] = a;
    }
}

fn day_number(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().div_euclid(86_400)
}

impl Detector {
    pub fn new(working_hours: Option<WorkingHours>) -> Detector {
        Detector {
            working_hours,
            ..Detector::default()
        }
    }

    fn finding(&mut self, kind: &'static str, subject: String, rec: &Value) {
        self.findings
            .entry((kind, subject))
            .or_default()
            .add(reference(rec));
    }

    /// One record, `in_period` when the report covers it.
    pub fn observe(&mut self, rec: &Value, in_period: bool) {
        let phase = s(rec, &["phase"]).unwrap_or("");
        if !in_period && matches!(phase, "denied" | "attempt" | "outcome") {
            self.history_before_period = true;
        }
        if self.trail_start.is_none() {
            self.trail_start = s(rec, &["ts"]).and_then(parse_ts);
        }
        match phase {
            "attempt" if rec.get("dry_run") != Some(&Value::Bool(true)) => {
                let caller = format!(
                    "{} {}",
                    s(rec, &["caller", "iss"]).unwrap_or("-"),
                    s(rec, &["caller", "sub"]).unwrap_or("-")
                );
                let project = s(rec, &["project"]).unwrap_or("-").to_string();
                let key = (caller.clone(), project.clone());
                let new = !self.seen.contains(&key);
                if new && self.seen.len() < MAX_SEEN {
                    self.seen.insert(key);
                }
                let baseline_done = self.history_before_period
                    || match (self.trail_start, s(rec, &["ts"]).and_then(parse_ts)) {
                        (Some(start), Some(at)) => at - start >= time::Duration::days(1),
                        _ => false,
                    };
                if in_period && new && baseline_done {
                    self.finding("first_seen_caller", format!("{caller} on {project}"), rec);
                }
                if in_period && s(rec, &["secret_source"]) == Some("stale") {
                    self.finding("stale_secret", project.clone(), rec);
                }
                if let Some(id) = s(rec, &["request_id"]) {
                    self.pending.insert(
                        id.to_string(),
                        (team_of(rec), project, reference(rec), in_period),
                    );
                }
            }
            "outcome" => {
                let status = rec
                    .get("upstream")
                    .and_then(|u| u.get("status"))
                    .and_then(Value::as_u64);
                if let Some((team, _project, r, attempt_in_period)) =
                    s(rec, &["request_id"]).and_then(|id| self.pending.remove(id))
                    && status.is_some_and(|st| (200..300).contains(&st))
                    && let Some(at) = parse_ts(&r.ts)
                {
                    let day = day_number(at);
                    *self.per_team_day.entry((team.clone(), day)).or_default() += 1;
                    if attempt_in_period {
                        self.period_days
                            .entry((team.clone(), day))
                            .or_default()
                            .add(r.clone());
                        if let Some(wh) = &self.working_hours
                            && !wh.contains(at)
                        {
                            self.findings
                                .entry(("outside_working_hours", team))
                                .or_default()
                                .add(r);
                        }
                    }
                }
                if in_period {
                    match status {
                        Some(st) if st == 429 || st >= 500 => self.streak.add(reference(rec)),
                        _ => self.end_streak(),
                    }
                }
            }
            "denied" if in_period => {
                let reason = s(rec, &["reason"]).unwrap_or("");
                match reason {
                    "rate_limited" | "quota_exceeded" => self.finding(
                        "limit_refusal",
                        format!("{reason}: team {}", team_of(rec)),
                        rec,
                    ),
                    "token_replayed" | "token_binding_mismatch" => self.finding(
                        "replay_or_binding",
                        format!("{reason}: {}", s(rec, &["caller", "sub"]).unwrap_or("-")),
                        rec,
                    ),
                    _ => {}
                }
                if s(rec, &["detail"]) == Some("bad_signature")
                    && let Some(ts) = s(rec, &["ts"])
                {
                    let minute = ts.get(..16).unwrap_or(ts);
                    if self.sig_minute.as_ref().is_none_or(|(m, _)| m != minute) {
                        self.end_sig_minute();
                        self.sig_minute = Some((minute.to_string(), Finding::default()));
                    }
                    if let Some((_, f)) = &mut self.sig_minute {
                        f.add(reference(rec));
                    }
                }
            }
            _ => {}
        }
    }

    fn end_sig_minute(&mut self) {
        if let Some((minute, f)) = self.sig_minute.take()
            && f.count >= SIG_BURST
        {
            keep_largest(
                &mut self.sig_bursts,
                Anomaly {
                    kind: "signature_burst",
                    subject: format!("{minute}Z: {} bad signatures", f.count),
                    count: f.count,
                    records: f.records,
                },
            );
        }
    }

    fn end_streak(&mut self) {
        let streak = std::mem::take(&mut self.streak);
        if streak.count >= STREAK_MIN {
            let subject = format!(
                "{} answers in a row, from {}",
                streak.count,
                streak.records.first().map_or("-", |r| r.ts.as_str())
            );
            keep_largest(
                &mut self.streaks,
                Anomaly {
                    kind: "batch_error_streak",
                    subject,
                    count: streak.count,
                    records: streak.records,
                },
            );
        }
    }

    /// Every finding, in a stable order (by kind, then subject).
    pub fn finish(mut self) -> Vec<Anomaly> {
        self.end_streak();
        self.end_sig_minute();
        let mut out: Vec<Anomaly> = Vec::new();
        let first_day: BTreeMap<&str, i64> =
            self.per_team_day
                .keys()
                .fold(BTreeMap::new(), |mut m, (team, day)| {
                    m.entry(team.as_str()).or_insert(*day);
                    m
                });
        for ((team, day), f) in &self.period_days {
            let Some(first) = first_day.get(team.as_str()) else {
                continue;
            };
            if day - first < MIN_HISTORY_DAYS {
                continue;
            }
            let mut trailing: Vec<u64> = (1..=TRAILING_DAYS)
                .map(|back| {
                    self.per_team_day
                        .get(&(team.clone(), day - back))
                        .copied()
                        .unwrap_or(0)
                })
                .collect();
            trailing.sort_unstable();
            let median = trailing[trailing.len() / 2].max(1);
            if f.count >= SPIKE_MIN && f.count > SPIKE_FACTOR * median {
                let date = OffsetDateTime::from_unix_timestamp(day * 86_400)
                    .map(|d| d.date().to_string())
                    .unwrap_or_default();
                out.push(Anomaly {
                    kind: "daily_spike",
                    subject: format!(
                        "team {team} on {date}: {} deletions, trailing median {median}",
                        f.count
                    ),
                    count: f.count,
                    records: f.records.clone(),
                });
            }
        }
        out.extend(self.sig_bursts);
        for ((kind, subject), f) in self.findings {
            out.push(Anomaly {
                kind,
                subject,
                count: f.count,
                records: f.records,
            });
        }
        out.extend(self.streaks);
        out.sort_by(|a, b| (a.kind, &a.subject).cmp(&(b.kind, &b.subject)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Trail {
        d: Detector,
        seq: u64,
    }

    impl Trail {
        fn rec(&mut self, ts: &str, phase: &str, extra: Value, in_period: bool) -> String {
            self.seq += 1;
            let id = format!("r{}", self.seq);
            let mut v = json!({"seq": self.seq, "ts": ts, "phase": phase, "request_id": id, "replica": "gw-0"});
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            self.d.observe(&v, in_period);
            id
        }
        /// An attempt and its outcome with `status`.
        fn delete(&mut self, ts: &str, sub: &str, team: &str, status: u64, in_period: bool) {
            let caller = json!({"iss": "https://idp", "sub": sub, "team": team});
            let id = self.rec(
                ts,
                "attempt",
                json!({"caller": caller, "project": "p1", "secret_source": "cached"}),
                in_period,
            );
            self.seq += 1;
            let out = json!({"seq": self.seq, "ts": ts, "phase": "outcome", "request_id": id,
                "replica": "gw-0", "upstream": {"status": status}});
            self.d.observe(&out, in_period);
        }
    }

    fn kinds(found: &[Anomaly]) -> Vec<(&'static str, String, u64)> {
        found
            .iter()
            .map(|a| (a.kind, a.subject.clone(), a.count))
            .collect()
    }

    #[test]
    fn each_kind_is_found_where_it_is_and_not_where_it_is_not() {
        let mut t = Trail {
            d: Detector::new(Some("Mon-Fri 08:00-19:00".parse().unwrap())),
            seq: 0,
        };
        // History: growth deletes once a day for ten days; ops too.
        for day in 11..=20 {
            let ts = format!("2026-11-{day:02}T10:00:00.000Z");
            t.delete(&ts, "svc-a", "growth", 204, false);
            t.delete(&ts, "svc-ops", "ops", 204, false);
            t.delete(&ts, "svc-q", "quiet", 204, false);
            t.delete(&ts, "svc-q", "quiet", 204, false);
        }
        // quiet: 5 against a median of 2 is not three times it.
        for i in 0..5 {
            t.delete(
                &format!("2026-11-23T15:0{i}:00.000Z"),
                "svc-q",
                "quiet",
                204,
                true,
            );
        }
        // The period: Monday 2026-11-23.
        for i in 0..6 {
            t.delete(
                &format!("2026-11-23T10:0{i}:00.000Z"),
                "svc-a",
                "growth",
                204,
                true,
            );
        }
        for i in 0..3 {
            t.delete(
                &format!("2026-11-23T11:0{i}:00.000Z"),
                "svc-ops",
                "ops",
                204,
                true,
            );
        }
        t.delete("2026-11-23T03:00:00.000Z", "svc-new", "growth", 204, true);
        let stale = json!({"caller": {"iss": "https://idp", "sub": "svc-a", "team": "growth"},
            "project": "p1", "secret_source": "stale"});
        t.rec("2026-11-23T12:00:00.000Z", "attempt", stale, true);
        for reason in [
            "quota_exceeded",
            "quota_exceeded",
            "token_replayed",
            "forbidden",
        ] {
            let d = json!({"reason": reason, "caller": {"sub": "svc-a", "team": "growth"}});
            t.rec("2026-11-23T12:01:00.000Z", "denied", d, true);
        }
        for i in 0..10 {
            t.rec(
                &format!("2026-11-23T13:00:{i:02}.000Z"),
                "denied",
                json!({"reason": "token_invalid", "detail": "bad_signature"}),
                true,
            );
        }
        for i in 0..9 {
            t.rec(
                &format!("2026-11-23T13:01:{i:02}.000Z"),
                "denied",
                json!({"reason": "token_invalid", "detail": "bad_signature"}),
                true,
            );
        }
        // Batch: 429, 503, 502, then a 204 ends it; 429, 429, 204 is too short.
        for st in [429, 503, 502, 204, 429, 429, 204] {
            t.delete("2026-11-23T14:00:00.000Z", "svc-ops", "ops", st, true);
        }
        let found = t.d.finish();
        let k = kinds(&found);
        let has = |kind: &str, subject: &str, n: u64| {
            assert!(
                k.iter()
                    .any(|(a, b, c)| *a == kind && b.contains(subject) && *c == n),
                "{kind} {subject} {n}: {k:#?}"
            );
        };
        has("first_seen_caller", "https://idp svc-new on p1", 1);
        // 6 + the new caller's 1 (the stale attempt has no outcome).
        has(
            "daily_spike",
            "team growth on 2026-11-23: 7 deletions, trailing median 1",
            7,
        );
        has("limit_refusal", "quota_exceeded: team growth", 2);
        has("replay_or_binding", "token_replayed: svc-a", 1);
        has(
            "signature_burst",
            "2026-11-23T13:00Z: 10 bad signatures",
            10,
        );
        has("stale_secret", "p1", 1);
        has("outside_working_hours", "growth", 1);
        has("batch_error_streak", "3 answers in a row", 3);
        // ops: 3 + the two 204s of the streak section = 5, at the floor.
        has("daily_spike", "team ops on 2026-11-23: 5 deletions", 5);
        assert_eq!(k.len(), 9, "{k:#?}");
        let first = found
            .iter()
            .find(|a| a.kind == "first_seen_caller")
            .unwrap();
        assert_eq!(first.records[0].ts, "2026-11-23T03:00:00.000Z");
    }

    #[test]
    fn without_history_the_first_day_is_the_baseline_and_no_day_spikes() {
        let mut t = Trail {
            d: Detector::new(None),
            seq: 0,
        };
        for i in 0..20 {
            t.delete(
                &format!("2026-11-23T10:{i:02}:00.000Z"),
                &format!("svc-{i}"),
                "growth",
                204,
                true,
            );
        }
        // A day later: a known caller, and a new one.
        t.delete("2026-11-24T10:30:00.000Z", "svc-3", "growth", 204, true);
        t.delete("2026-11-24T10:31:00.000Z", "svc-new", "growth", 204, true);
        assert_eq!(
            kinds(&t.d.finish()),
            vec![(
                "first_seen_caller",
                "https://idp svc-new on p1".to_string(),
                1
            )]
        );
    }

    #[test]
    fn working_hours_parse_and_wrap() {
        let wh: WorkingHours = "Fri-Mon 22:00-23:30".parse().unwrap();
        let at = |s: &str| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
        };
        assert!(wh.contains(at("2026-11-23T22:10:00Z"))); // Monday
        assert!(!wh.contains(at("2026-11-24T22:10:00Z"))); // Tuesday
        assert!(!wh.contains(at("2026-11-23T23:30:00Z")));
        for bad in [
            "8-19",
            "19:00-08:00",
            "Mon 08:00-19:00",
            "Mon-Xyz 08:00-19:00",
            "24:00-25:00",
        ] {
            assert!(bad.parse::<WorkingHours>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_flood_of_forgeries_is_a_bounded_number_of_findings_the_largest_kept() {
        let mut t = Trail {
            d: Detector::new(None),
            seq: 0,
        };
        for minute in 0..150u64 {
            // Minute m has 10 + m bad signatures.
            for i in 0..(10 + minute) {
                let ts = format!(
                    "2026-11-23T{:02}:{:02}:{:02}.000Z",
                    minute / 60,
                    minute % 60,
                    i % 60
                );
                t.rec(
                    &ts,
                    "denied",
                    json!({"reason": "token_invalid", "detail": "bad_signature"}),
                    true,
                );
            }
        }
        let found = t.d.finish();
        assert_eq!(found.len(), MAX_FINDINGS_PER_KIND);
        assert!(
            found
                .iter()
                .all(|a| a.kind == "signature_burst" && a.count >= 60)
        );
        assert!(found.iter().all(|a| a.records.len() <= MAX_REFS));
    }
}
