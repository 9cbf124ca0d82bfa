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

#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
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
}

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

/// Summarises the records of `chains` within `filter`'s period (several
/// chains merged by `ts`), streamed: memory is the counts, not the records.
pub fn build(chains: &[Chain], filter: &Filter) -> Result<Report, Broken> {
    let mut r = Report::default();
    let mut reasons = BTreeMap::new();
    let mut callers = BTreeMap::new();
    chains::for_each_record(chains, filter, |_, rec| {
        let rec = &rec;
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
            if let Some(Value::Object(by)) = rec.get("by_reason") {
                for (reason, c) in by {
                    *reasons.entry(reason.clone()).or_default() += c.as_u64().unwrap_or(0);
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
            *reasons
                .entry(s(rec, &["reason"]).unwrap_or_default())
                .or_default() += 1;
            let who = s(rec, &["caller", "sub"]).unwrap_or_else(|| "(unauthenticated)".into());
            *callers.entry(who).or_default() += 1;
        } else if s(rec, &["secret_source"]).as_deref() == Some("stale") {
            r.stale_secret_uses.push(StaleUse {
                seq: rec.get("seq").and_then(Value::as_u64).unwrap_or(0),
                ts: s(rec, &["ts"]).unwrap_or_default(),
                project: s(rec, &["project"]).unwrap_or_default(),
                request_id: s(rec, &["request_id"]).unwrap_or_default(),
            });
        }
    })?;
    r.denial_reasons = top(reasons, 10);
    r.most_denied_callers = top(callers, 10);
    if r.by_replica.len() < 2 {
        r.by_replica.clear();
    }
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
        line(&mut o, format!("chain: {}", esc(&self.chain)));
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
        line(&mut o, "\ntop denial reasons:".into());
        for (k, n) in &self.denial_reasons {
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
