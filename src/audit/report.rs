//! `audit report`: a reviewer's summary of a period.
//!
//! Requests are counted once each: by their `denied` record, or by their
//! `attempt` (the request was allowed and sent). Outcomes, checkpoints and
//! repairs are not requests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::chains::{self, Chain};
use super::verify::{self, Broken, Filter, VerifyOptions};

#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub allow: u64,
    pub deny: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StaleUse {
    pub seq: u64,
    pub ts: String,
    pub project: String,
    pub request_id: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The period covered (RFC 3339), when bounded.
    pub since: Option<String>,
    pub until: Option<String>,
    pub requests: Counts,
    pub by_team: BTreeMap<String, Counts>,
    pub by_project: BTreeMap<String, Counts>,
    pub by_action: BTreeMap<String, Counts>,
    pub denial_reasons: Vec<(String, u64)>,
    pub most_denied_callers: Vec<(String, u64)>,
    pub stale_secret_uses: Vec<StaleUse>,
    pub upstream_statuses: BTreeMap<String, u64>,
    /// `repair` records: (seq, reason).
    pub repairs: Vec<(u64, String)>,
    /// Unauthenticated denials counted in `summary` records (included in
    /// the counts above) rather than recorded one by one.
    pub summarized_denials: u64,
    /// `prune` records: files removed by retention, accounted for.
    pub prunes: u64,
    /// The chain check over every file given: "ok …" or the first break
    /// (with several chains, each by name).
    pub chain: String,
    /// Requests by the replica that recorded them, when the records come
    /// from more than one.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_replica: BTreeMap<String, Counts>,
    /// Refusals per UTC day and reason (summaries included).
    pub refusals_per_day: BTreeMap<String, BTreeMap<String, u64>>,
    /// Refusals of requests without a verified token, by client address
    /// (the 10 largest; summaries' own top addresses included).
    pub unauthenticated_by_client_addr: Vec<(String, u64)>,
    /// Every forwarded delete of the period, with Batch's answer.
    pub deletions: Deletions,
    /// What looks unusual, each with the records behind it
    /// (see [`super::anomalies`] for how each is decided).
    pub anomalies: Vec<super::anomalies::Anomaly>,
    /// One verdict over every chain: `intact`, or what is wrong first.
    pub verdict: String,
    /// Each chain's proof of integrity, whole (not only the period).
    pub integrity: Vec<ChainIntegrity>,
}

/// The deletes the gateway forwarded (not dry runs). A deletion counts in
/// `per_day_team` and `per_project` when Batch answered 2xx; `list` holds
/// every forwarded one, whatever Batch said (`status` absent when the
/// trail has the attempt but no outcome: the gateway stopped in between).
#[derive(Debug, Default, Serialize)]
pub struct Deletions {
    pub deleted: u64,
    /// Day (UTC, `YYYY-MM-DD`) → team → deletions.
    pub per_day_team: BTreeMap<String, BTreeMap<String, u64>>,
    pub per_project: BTreeMap<String, u64>,
    /// In the order Batch answered; attempts without an answer last.
    pub list: Spool,
}

/// Deletions in the order added: the first [`Spool::IN_MEMORY`] in memory,
/// the rest as JSON lines in an anonymous temporary file, so a report over
/// any number of deletions holds a bounded number. (Without a temporary
/// folder they stay in memory.)
#[derive(Debug, Default)]
pub struct Spool {
    memory: Vec<Deletion>,
    file: std::sync::Mutex<Option<std::io::BufWriter<std::fs::File>>>,
    spilled: u64,
}

impl Spool {
    pub const IN_MEMORY: usize = 10_000;

    pub fn len(&self) -> u64 {
        self.memory.len() as u64 + self.spilled
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push(&mut self, d: Deletion) {
        if self.memory.len() < Self::IN_MEMORY {
            self.memory.push(d);
            return;
        }
        let Ok(slot) = self.file.get_mut() else {
            self.memory.push(d);
            return;
        };
        if slot.is_none() {
            *slot = tempfile::tempfile().ok().map(std::io::BufWriter::new);
        }
        match slot {
            Some(w) => {
                use std::io::Write as _;
                let ok = serde_json::to_writer(&mut *w, &d).is_ok() && w.write_all(b"\n").is_ok();
                if ok {
                    self.spilled += 1;
                } else {
                    self.memory.push(d);
                }
            }
            None => self.memory.push(d),
        }
    }

    /// Calls `f` for every deletion, in order.
    pub fn for_each(&self, mut f: impl FnMut(&Deletion)) -> std::io::Result<()> {
        use std::io::{BufRead as _, Seek as _, SeekFrom, Write as _};
        self.memory.iter().for_each(&mut f);
        let Ok(mut guard) = self.file.lock() else {
            return Err(std::io::Error::other("spool lock poisoned"));
        };
        if let Some(w) = guard.as_mut() {
            w.flush()?;
            let mut file = w.get_ref().try_clone()?;
            file.seek(SeekFrom::Start(0))?;
            let mut reader = std::io::BufReader::new(&file);
            let mut line = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                let d: Deletion = serde_json::from_str(&line).map_err(std::io::Error::other)?;
                f(&d);
            }
            // The clone shares the offset: writing resumes at the end.
            file.seek(SeekFrom::End(0))?;
        }
        Ok(())
    }
}

impl Serialize for Spool {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeSeq as _};
        let mut seq = s.serialize_seq(usize::try_from(self.len()).ok())?;
        let mut failed = None;
        let read = self.for_each(|d| {
            if failed.is_none()
                && let Err(e) = seq.serialize_element(d)
            {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        read.map_err(S::Error::custom)?;
        seq.end()
    }
}

#[derive(Debug, Default, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Deletion {
    pub ts: String,
    pub team: String,
    pub sub: String,
    pub project: String,
    pub campaign_id: String,
    pub status: Option<u16>,
    pub request_id: String,
    pub replica: String,
}

impl Deletions {
    fn add(&mut self, d: Deletion) {
        if d.status.is_some_and(|s| (200..300).contains(&s)) {
            self.deleted += 1;
            let day = d.ts.get(..10).unwrap_or_default().to_string();
            *self
                .per_day_team
                .entry(day)
                .or_default()
                .entry(d.team.clone())
                .or_default() += 1;
            *self.per_project.entry(d.project.clone()).or_default() += 1;
        }
        self.list.push(d);
    }
}

/// What a reviewer needs to trust one chain (one replica's trail).
#[derive(Debug, Default, Clone, Serialize)]
pub struct ChainIntegrity {
    /// The replica's folder name, or `trail` for a single chain.
    pub chain: String,
    /// `ok`, `ok_pruned` (older files removed by retention, accounted for
    /// by a prune record), `start_unaccounted` or `broken`.
    pub state: &'static str,
    /// Where the chain breaks, when it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<String>,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub first_ts: Option<String>,
    pub last_ts: Option<String>,
    pub checkpoints: u64,
    /// Whether every checkpoint's signature verified against
    /// `--public-key`; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signatures_verified: Option<bool>,
    pub last_checkpoint_head: Option<String>,
    /// Records after the last checkpoint (no signature covers them yet).
    pub after_last_checkpoint: u64,
    pub repairs: Vec<(u64, String)>,
    pub prunes: u64,
    pub summaries: u64,
    /// Silences between two consecutive records longer than [`GAP_S`],
    /// the longest first (at most [`MAX_GAPS`]).
    pub gaps: Vec<Gap>,
}

/// A silence in one chain: no record between `from` and `to`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Gap {
    pub after_seq: u64,
    pub from: String,
    pub to: String,
    pub seconds: i64,
}

/// A silence this long in a chain is listed: a gateway in service writes
/// at least a checkpoint a minute when signing is on, and a stopped one
/// is worth a reviewer's look either way.
pub const GAP_S: i64 = 3600;
/// Gaps listed per chain.
pub const MAX_GAPS: usize = 20;

fn s(v: &Value, path: &[&str]) -> Option<String> {
    let mut cur = v;
    for p in path {
        cur = cur.get(p)?;
    }
    match cur {
        Value::String(x) => Some(x.clone()),
        Value::Array(a) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn top(m: BTreeMap<String, u64>, n: usize) -> Vec<(String, u64)> {
    let mut v: Vec<_> = m.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

/// How to build a report beyond its period.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Ed25519 public key: checkpoint signatures are verified.
    pub public_key: Option<Vec<u8>>,
    /// Deletions outside these hours are findings.
    pub working_hours: Option<super::anomalies::WorkingHours>,
}

/// The UTC day of a record's `ts` (`YYYY-MM-DD`).
fn day_of(rec: &Value) -> String {
    s(rec, &["ts"])
        .and_then(|t| t.get(..10).map(str::to_string))
        .unwrap_or_else(|| "-".into())
}

/// Counts by a key callers choose (a client address): at most
/// [`BoundedCounts::MAX`] keys are kept, the rest counted under `(other)`,
/// so a flood from many addresses costs bounded memory.
#[derive(Default)]
struct BoundedCounts(BTreeMap<String, u64>);

impl BoundedCounts {
    const MAX: usize = 10_000;
    const OTHER: &'static str = "(other)";

    fn add(&mut self, key: &str, n: u64) {
        let key = crate::common::bounded(key, 64);
        if let Some(c) = self.0.get_mut(key) {
            *c += n;
        } else if self.0.len() < Self::MAX {
            self.0.insert(key.to_string(), n);
        } else {
            *self.0.entry(Self::OTHER.to_string()).or_default() += n;
        }
    }

    fn top(self, n: usize) -> Vec<(String, u64)> {
        top(self.0, n)
    }
}

/// Summarises the records of `chains` within `filter`'s period (several
/// chains merged by `ts`), streamed: memory is the counts, not the records.
pub fn build(chains: &[Chain], filter: &Filter, opts: &Options) -> Result<Report, Broken> {
    let public_key = opts.public_key.as_deref();
    let mut detector = super::anomalies::Detector::new(opts.working_hours.clone());
    let fmt = |t: Option<time::OffsetDateTime>| {
        t.and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
    };
    let mut r = Report {
        since: fmt(filter.since),
        until: fmt(filter.until),
        ..Report::default()
    };
    let mut reasons = BTreeMap::new();
    let mut callers = BTreeMap::new();
    let mut pending: BTreeMap<String, Deletion> = BTreeMap::new();
    let mut addrs = BoundedCounts::default();
    // Every record once: those before the period are the history the
    // anomalies compare with.
    chains::for_each_record(chains, &Filter::default(), |_, rec| {
        let rec = &rec;
        let in_period = filter.matches(rec);
        detector.observe(rec, in_period);
        if !in_period {
            return;
        }
        let phase = s(rec, &["phase"]).unwrap_or_default();
        if phase == "repair" {
            let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
            r.repairs
                .push((seq, s(rec, &["reason"]).unwrap_or_default()));
            return;
        }
        if phase == "outcome" {
            if let Some(st) = s(rec, &["upstream", "status"]) {
                *r.upstream_statuses.entry(st).or_default() += 1;
            }
            // Outcomes follow their attempt closely: the pending map holds
            // only requests in flight when the records were written.
            if let Some(mut d) = s(rec, &["request_id"]).and_then(|id| pending.remove(&id)) {
                d.status = rec
                    .get("upstream")
                    .and_then(|u| u.get("status"))
                    .and_then(Value::as_u64)
                    .and_then(|v| u16::try_from(v).ok());
                r.deletions.add(d);
            }
            return;
        }
        if phase == "summary" {
            // Unauthenticated denials past the per-second budget, counted.
            let n = rec.get("count").and_then(Value::as_u64).unwrap_or(0);
            r.summarized_denials += n;
            r.requests.deny += n;
            for key in [
                r.by_team.entry("(unauthenticated)".into()).or_default(),
                r.by_project.entry("-".into()).or_default(),
                r.by_action.entry("-".into()).or_default(),
            ] {
                key.deny += n;
            }
            let day = day_of(rec);
            if let Some(Value::Object(by)) = rec.get("by_reason") {
                for (reason, c) in by {
                    let c = c.as_u64().unwrap_or(0);
                    *reasons.entry(reason.clone()).or_default() += c;
                    *r.refusals_per_day
                        .entry(day.clone())
                        .or_default()
                        .entry(reason.clone())
                        .or_default() += c;
                }
            }
            if let Some(Value::Object(by)) = rec.get("by_client_addr") {
                for (addr, c) in by {
                    addrs.add(addr, c.as_u64().unwrap_or(0));
                }
            }
            *callers.entry("(unauthenticated)".into()).or_default() += n;
            return;
        }
        if phase == "prune" {
            r.prunes += 1;
            return;
        }
        if phase != "denied" && phase != "attempt" {
            return;
        }
        let deny = phase == "denied";
        let bump = |c: &mut Counts| {
            if deny { c.deny += 1 } else { c.allow += 1 }
        };
        bump(&mut r.requests);
        bump(
            r.by_replica
                .entry(s(rec, &["replica"]).unwrap_or_else(|| "-".into()))
                .or_default(),
        );
        let team = s(rec, &["caller", "team"]).unwrap_or_else(|| "(unauthenticated)".into());
        bump(r.by_team.entry(team).or_default());
        bump(
            r.by_project
                .entry(s(rec, &["project"]).unwrap_or_else(|| "-".into()))
                .or_default(),
        );
        bump(
            r.by_action
                .entry(s(rec, &["action"]).unwrap_or_else(|| "-".into()))
                .or_default(),
        );
        if deny {
            let reason = s(rec, &["reason"]).unwrap_or_default();
            *r.refusals_per_day
                .entry(day_of(rec))
                .or_default()
                .entry(reason.clone())
                .or_default() += 1;
            if rec.get("caller").is_none() {
                // By address, as summaries count them: the port is the
                // connection's, not the client's.
                let addr = s(rec, &["client_addr"]).unwrap_or_else(|| "-".into());
                let ip = addr
                    .parse::<std::net::SocketAddr>()
                    .map_or(addr, |a| a.ip().to_string());
                addrs.add(&ip, 1);
            }
            *reasons.entry(reason).or_default() += 1;
            let who = s(rec, &["caller", "sub"]).unwrap_or_else(|| "(unauthenticated)".into());
            *callers.entry(who).or_default() += 1;
        } else {
            if rec.get("dry_run") != Some(&Value::Bool(true))
                && let Some(id) = s(rec, &["request_id"])
            {
                let field = |path: &[&str]| s(rec, path).unwrap_or_else(|| "-".into());
                pending.insert(
                    id.clone(),
                    Deletion {
                        ts: field(&["ts"]),
                        team: field(&["caller", "team"]),
                        sub: field(&["caller", "sub"]),
                        project: field(&["project"]),
                        campaign_id: field(&["campaign_id"]),
                        status: None,
                        request_id: id,
                        replica: field(&["replica"]),
                    },
                );
            }
        }
        if !deny && s(rec, &["secret_source"]).as_deref() == Some("stale") {
            r.stale_secret_uses.push(StaleUse {
                seq: rec.get("seq").and_then(Value::as_u64).unwrap_or(0),
                ts: s(rec, &["ts"]).unwrap_or_default(),
                project: s(rec, &["project"]).unwrap_or_default(),
                request_id: s(rec, &["request_id"]).unwrap_or_default(),
            });
        }
    })?;
    // Attempts without an outcome: forwarded, answer unknown.
    for (_, d) in std::mem::take(&mut pending) {
        r.deletions.add(d);
    }
    r.unauthenticated_by_client_addr = addrs.top(10);
    r.anomalies = detector.finish();
    r.denial_reasons = top(reasons, 10);
    r.most_denied_callers = top(callers, 10);
    if r.by_replica.len() < 2 {
        r.by_replica.clear();
    }
    r.integrity = chains.iter().map(|c| integrity(c, public_key)).collect();
    r.verdict = verdict(&r.integrity);
    r.chain = chains
        .iter()
        .map(|c| match &c.name {
            Some(name) => format!("{name}: {}", chain_state(&c.files)),
            None => chain_state(&c.files),
        })
        .collect::<Vec<_>>()
        .join("; ");
    Ok(r)
}

/// One chain's integrity: the chain check (signatures too with
/// `public_key`), then one streamed pass for its times and silences.
fn integrity(chain: &Chain, public_key: Option<&[u8]>) -> ChainIntegrity {
    let mut out = ChainIntegrity {
        chain: chain.name.clone().unwrap_or_else(|| "trail".into()),
        ..ChainIntegrity::default()
    };
    let opts = VerifyOptions {
        allow_pruned_start: true,
        public_key: public_key.map(<[u8]>::to_vec),
        ..VerifyOptions::default()
    };
    match verify::verify(&chain.files, &opts) {
        Ok(v) => {
            out.state = match (v.pruned_start, v.pruned_by_retention) {
                (false, _) => "ok",
                (true, true) => "ok_pruned",
                (true, false) => "start_unaccounted",
            };
            out.records = v.records;
            out.first_seq = v.first_seq;
            out.last_seq = v.last_seq;
            out.checkpoints = v.checkpoints;
            out.signatures_verified = public_key.map(|_| true);
            out.last_checkpoint_head = v.last_checkpoint_head;
            out.after_last_checkpoint = v.after_last_checkpoint;
            out.repairs = v.repairs;
            out.prunes = v.prunes;
            out.summaries = v.summaries;
        }
        Err(b) => {
            out.state = "broken";
            out.broken_at = Some(b.to_string());
            // A key was given and the chain did not verify: nothing says
            // the signatures did.
            out.signatures_verified = public_key.map(|_| false);
        }
    }
    let parse = |ts: &str| {
        time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()
    };
    let mut prev: Option<(u64, String, time::OffsetDateTime)> = None;
    for rec in verify::Records::new(&chain.files, &Filter::default()) {
        let Ok((_, rec)) = rec else { break };
        let Some(ts) = rec.get("ts").and_then(Value::as_str) else {
            continue;
        };
        let Some(at) = parse(ts) else { continue };
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
        out.first_ts.get_or_insert_with(|| ts.to_string());
        out.last_ts = Some(ts.to_string());
        if let Some((pseq, pts, pat)) = &prev {
            let seconds = (at - *pat).whole_seconds();
            if seconds > GAP_S {
                out.gaps.push(Gap {
                    after_seq: *pseq,
                    from: pts.clone(),
                    to: ts.to_string(),
                    seconds,
                });
                out.gaps.sort_by_key(|g| std::cmp::Reverse(g.seconds));
                out.gaps.truncate(MAX_GAPS);
            }
        }
        prev = Some((seq, ts.to_string(), at));
    }
    out
}

/// One line for the top of the page: `intact`, or the first problem.
fn verdict(chains: &[ChainIntegrity]) -> String {
    let problem = |c: &ChainIntegrity| match c.state {
        "broken" => Some(format!(
            "BROKEN: {} {}",
            c.chain,
            c.broken_at.as_deref().unwrap_or("")
        )),
        "start_unaccounted" => Some(format!(
            "INCOMPLETE: {} starts at seq {} and no prune record says why",
            c.chain,
            c.first_seq.unwrap_or(0)
        )),
        _ => None,
    };
    match chains.iter().find_map(problem) {
        Some(p) => p,
        None if chains.iter().any(|c| !c.repairs.is_empty()) => {
            "intact, with repairs (see each chain)".into()
        }
        None => "intact".into(),
    }
}

/// One chain's check, as the report states it.
fn chain_state(files: &[PathBuf]) -> String {
    let opts = VerifyOptions {
        allow_pruned_start: true,
        ..VerifyOptions::default()
    };
    match verify::verify(files, &opts) {
        Ok(v) if v.pruned_start && v.pruned_by_retention => format!(
            "ok from seq {} (older records removed by retention, accounted for by a prune record) to {}",
            v.first_seq.unwrap_or(0),
            v.last_seq.unwrap_or(0)
        ),
        Ok(v) if v.pruned_start => format!(
            "NOT ACCOUNTED FOR: the chain starts at seq {} and no prune record says why; verified from there to {}",
            v.first_seq.unwrap_or(0),
            v.last_seq.unwrap_or(0)
        ),
        Ok(v) => format!("ok, {} records", v.records),
        Err(b) => format!("BROKEN at {b}"),
    }
}

impl Report {
    /// The reviewer's text.
    pub fn text(&self) -> String {
        use crate::common::escape_controls as esc;
        let mut o = String::new();
        let line = |o: &mut String, s: String| {
            o.push_str(&s);
            o.push('\n');
        };
        line(&mut o, format!("verdict: {}", esc(&self.verdict)));
        line(&mut o, format!("chain: {}", esc(&self.chain)));
        for c in &self.integrity {
            line(
                &mut o,
                format!(
                    "  {}: {}, seq {}..{}, {} .. {}, {} checkpoints{}, {} after the last",
                    esc(&c.chain),
                    c.state,
                    c.first_seq.unwrap_or(0),
                    c.last_seq.unwrap_or(0),
                    esc(c.first_ts.as_deref().unwrap_or("-")),
                    esc(c.last_ts.as_deref().unwrap_or("-")),
                    c.checkpoints,
                    match c.signatures_verified {
                        Some(true) => " (signatures verified)",
                        Some(false) => " (signatures NOT verified)",
                        None => "",
                    },
                    c.after_last_checkpoint
                ),
            );
            for g in &c.gaps {
                line(
                    &mut o,
                    format!(
                        "    silent {} s after seq {}: {} .. {}",
                        g.seconds,
                        g.after_seq,
                        esc(&g.from),
                        esc(&g.to)
                    ),
                );
            }
        }
        line(
            &mut o,
            format!(
                "requests: {} allowed, {} denied",
                self.requests.allow, self.requests.deny
            ),
        );
        for (title, m) in [
            ("replica", &self.by_replica),
            ("team", &self.by_team),
            ("project", &self.by_project),
            ("action", &self.by_action),
        ] {
            if m.is_empty() && title == "replica" {
                // One replica's records: nothing to split.
                continue;
            }
            line(&mut o, format!("\nby {title}:"));
            for (k, c) in m {
                line(
                    &mut o,
                    format!("  {:<32} allow {:>6}  deny {:>6}", esc(k), c.allow, c.deny),
                );
            }
        }
        let d = &self.deletions;
        line(
            &mut o,
            format!(
                "\ndeletions: {} (Batch answered 2xx), {} forwarded",
                d.deleted,
                d.list.len()
            ),
        );
        for (day, teams) in &d.per_day_team {
            let per: Vec<String> = teams
                .iter()
                .map(|(t, n)| format!("{} {n}", esc(t)))
                .collect();
            line(&mut o, format!("  {day}: {}", per.join(", ")));
        }
        for (p, n) in &d.per_project {
            line(&mut o, format!("  project {:<24} {n:>6}", esc(p)));
        }
        line(&mut o, format!("\nunusual: {}", self.anomalies.len()));
        for a in &self.anomalies {
            let refs: Vec<String> = a
                .records
                .iter()
                .take(3)
                .map(|r| format!("{} seq {}", esc(&r.replica), r.seq))
                .collect();
            line(
                &mut o,
                format!(
                    "  {}: {} ({} records: {}{})",
                    a.kind,
                    esc(&a.subject),
                    a.count,
                    refs.join(", "),
                    if a.records.len() > 3 { ", …" } else { "" }
                ),
            );
        }
        line(&mut o, "\ntop denial reasons:".into());
        for (k, n) in &self.denial_reasons {
            line(&mut o, format!("  {:<32} {n:>6}", esc(k)));
        }
        line(&mut o, "\nrefusals per day:".into());
        for (day, by) in &self.refusals_per_day {
            let per: Vec<String> = by.iter().map(|(k, n)| format!("{} {n}", esc(k))).collect();
            line(&mut o, format!("  {day}: {}", per.join(", ")));
        }
        line(
            &mut o,
            "\nunauthenticated refusals by client address:".into(),
        );
        for (k, n) in &self.unauthenticated_by_client_addr {
            line(&mut o, format!("  {:<32} {n:>6}", esc(k)));
        }
        line(&mut o, "\nmost denied callers (sub):".into());
        for (k, n) in &self.most_denied_callers {
            line(&mut o, format!("  {:<32} {n:>6}", esc(k)));
        }
        line(&mut o, "\nupstream statuses:".into());
        for (k, n) in &self.upstream_statuses {
            line(&mut o, format!("  {:<32} {n:>6}", esc(k)));
        }
        line(
            &mut o,
            format!("\nstale secret uses: {}", self.stale_secret_uses.len()),
        );
        for u in &self.stale_secret_uses {
            line(
                &mut o,
                format!(
                    "  seq {} {} project {} request {}",
                    u.seq,
                    esc(&u.ts),
                    esc(&u.project),
                    esc(&u.request_id)
                ),
            );
        }
        line(&mut o, format!("\nrepairs: {}", self.repairs.len()));
        for (seq, reason) in &self.repairs {
            line(&mut o, format!("  seq {seq}: {}", esc(reason)));
        }
        line(
            &mut o,
            format!(
                "\nunauthenticated denials counted in summaries: {}",
                self.summarized_denials
            ),
        );
        line(&mut o, format!("prune records: {}", self.prunes));
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_caller_chosen_keys_stay_bounded_and_add_up() {
        let mut c = BoundedCounts::default();
        for i in 0..(BoundedCounts::MAX + 500) {
            c.add(&format!("10.0.{}.{}", i / 256, i % 256), 1);
        }
        c.add("10.0.0.0", 5);
        assert!(c.0.len() <= BoundedCounts::MAX + 1);
        assert_eq!(c.0.get(BoundedCounts::OTHER), Some(&500));
        assert_eq!(c.0.values().sum::<u64>(), (BoundedCounts::MAX + 505) as u64);
        assert_eq!(c.top(1), vec![(BoundedCounts::OTHER.to_string(), 500)]);
    }

    #[test]
    fn a_long_list_of_deletions_spills_to_disk_and_reads_back_in_order() {
        let mut spool = Spool::default();
        let n = Spool::IN_MEMORY + 1234;
        for i in 0..n {
            spool.push(Deletion {
                request_id: format!("r{i}"),
                ..Deletion::default()
            });
        }
        assert_eq!(spool.len(), n as u64);
        assert_eq!(spool.memory.len(), Spool::IN_MEMORY, "the rest is on disk");
        let mut seen = Vec::new();
        spool.for_each(|d| seen.push(d.request_id.clone())).unwrap();
        assert_eq!(seen.len(), n);
        assert!(
            seen.iter()
                .enumerate()
                .all(|(i, id)| *id == format!("r{i}"))
        );
        // Read twice (JSON, then anything else): the same.
        let json = serde_json::to_value(&spool).unwrap();
        assert_eq!(json.as_array().unwrap().len(), n);
        assert_eq!(json[n - 1]["request_id"], format!("r{}", n - 1));
    }
}
