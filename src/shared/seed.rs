//! What one replica re-publishes to a store that came back empty, read
//! from its own audit trail: the single-use `jti`s it spent that a token
//! could still present, and today's (UTC) counts of attempts per (team,
//! project, action) for the daily quotas. Read newest first, stopping at
//! the first record older than both.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

/// A spent `jti`, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpentJti {
    pub iss: String,
    pub jti: String,
    pub request_id: String,
    /// Unix seconds.
    pub until: i64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seed {
    pub jtis: Vec<SpentJti>,
    /// (team, project, action) → attempts recorded today.
    pub counts: HashMap<(String, String, String), u64>,
    /// The UTC day (days since the epoch) the counts are for.
    pub day: i64,
}

/// Reads the trail at `live` (and its rotated files) backwards.
/// `window_s` is the longest a token can live (lifetime cap plus twice
/// the leeway); jtis are held until their token's `exp` plus `leeway_s`.
pub fn scan(live: &Path, now: i64, window_s: i64, leeway_s: i64) -> Seed {
    let day = now.div_euclid(86_400);
    let day_start = day * 86_400;
    let jti_from = now.saturating_sub(window_s);
    let mut seed = Seed {
        day,
        ..Seed::default()
    };
    crate::audit::newest_first(live, jti_from.min(day_start), |ts, line| {
        if memchr::memmem::find(line, b"\"phase\":\"attempt\"").is_none() {
            return true;
        }
        let Ok(rec) = serde_json::from_slice::<Value>(line) else {
            return true;
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let caller = rec.get("caller").cloned().unwrap_or(Value::Null);
        if ts >= day_start
            && let (Some(project), Some(action)) = (text(&rec, "project"), text(&rec, "action"))
        {
            let teams: Vec<String> = match caller.get("team") {
                Some(Value::String(t)) => vec![t.clone()],
                Some(Value::Array(ts)) => ts
                    .iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect(),
                _ => vec![],
            };
            for team in teams {
                *seed
                    .counts
                    .entry((team, project.clone(), action.clone()))
                    .or_default() += 1;
            }
        }
        if ts >= jti_from
            && caller.get("single_use").and_then(Value::as_bool) == Some(true)
            && let (Some(iss), Some(jti), Some(request_id)) = (
                text(&caller, "iss"),
                text(&caller, "jti"),
                text(&rec, "request_id"),
            )
        {
            let until = match caller.get("exp").and_then(Value::as_i64) {
                Some(exp) => exp.saturating_add(leeway_s),
                None => ts.saturating_add(window_s),
            };
            if until > now {
                seed.jtis.push(SpentJti {
                    iss,
                    jti,
                    request_id,
                    until,
                });
            }
        }
        true
    });
    seed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(ts: i64, phase: &str, team: Value, jti: Option<(&str, i64)>) -> String {
        let t = time::OffsetDateTime::from_unix_timestamp(ts).unwrap();
        let mut caller = json!({"iss": "i", "sub": "s", "team": team, "token_fp": "0"});
        if let Some((j, exp)) = jti {
            caller["jti"] = j.into();
            caller["exp"] = exp.into();
            caller["single_use"] = true.into();
        }
        json!({"v": 1, "seq": 1, "ts": crate::common::rfc3339_millis(t), "request_id": format!("r{ts}"),
            "phase": phase, "caller": caller, "action": "campaigns.delete",
            "project": "p", "prev": "0"})
        .to_string()
    }

    #[test]
    fn todays_attempts_and_live_jtis_are_found_and_nothing_older() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("audit.jsonl");
        // 10:00 UTC on some day.
        let now = 86_400 * 20_000 + 36_000;
        let lines = [
            // Yesterday: neither counted nor a live jti.
            line(
                now - 40_000,
                "attempt",
                json!("growth"),
                Some(("old", now + 10)),
            ),
            line(now - 3_000, "attempt", json!("growth"), None),
            line(now - 2_000, "denied", json!("growth"), None),
            line(
                now - 100,
                "attempt",
                json!(["growth", "ops"]),
                Some(("live", now + 500)),
            ),
            line(
                now - 50,
                "outcome",
                json!("growth"),
                Some(("live", now + 500)),
            ),
            line(
                now - 10,
                "attempt",
                json!("growth"),
                Some(("expired", now - 40)),
            ),
        ];
        std::fs::write(&live, lines.join("\n") + "\n").unwrap();
        let seed = scan(&live, now, 960, 30);
        assert_eq!(seed.day, 20_000);
        let key = |t: &str| {
            (
                t.to_string(),
                "p".to_string(),
                "campaigns.delete".to_string(),
            )
        };
        assert_eq!(seed.counts.get(&key("growth")), Some(&3));
        assert_eq!(seed.counts.get(&key("ops")), Some(&1));
        assert_eq!(seed.counts.len(), 2);
        assert_eq!(
            seed.jtis,
            vec![SpentJti {
                iss: "i".into(),
                jti: "live".into(),
                request_id: format!("r{}", now - 100),
                until: now + 530,
            }]
        );
    }
}
