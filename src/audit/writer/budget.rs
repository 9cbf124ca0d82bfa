//! The trail's budgets: the size budget (`max_total_bytes`, refusing,
//! never deleting) and the unauthenticated record budget with its
//! `summary` records.

use super::*;

impl Writer {
    pub(super) fn refuse_over_budget(&mut self, max: u64) {
        if !self.over_budget {
            tracing::error!(
                max_total_bytes = max,
                bytes = self.rotated_bytes + self.file_len,
                "the audit trail reached max_total_bytes; refusing requests until there is room (nothing is deleted for it)"
            );
        }
        self.over_budget = true;
        self.budget_checked = Instant::now();
        self.available.store(false, Ordering::SeqCst);
    }

    /// Over budget: at most once a second, sizes the rotated files again
    /// (an operator may have archived some) and lifts the refusal when
    /// the trail is back under its budget.
    pub(super) fn recheck_budget(&mut self) {
        let Some(max) = self.opts.max_total_bytes else {
            self.over_budget = false;
            return;
        };
        if !self.over_budget || self.budget_checked.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.budget_checked = Instant::now();
        self.rotated_bytes = rotated_size(&self.path);
        if self.rotated_bytes + self.file_len < max {
            self.over_budget = false;
            tracing::info!("the audit trail is under max_total_bytes again");
        }
    }

    /// A rotation found its target name taken: it is tried again once the
    /// name is free (someone moved the file that held it).
    pub(super) fn recheck_blocked(&mut self) {
        if let Some(taken) = &self.blocked
            && !taken.exists()
        {
            tracing::info!(name = %taken.display(), "the rotation target name is free again");
            self.blocked = None;
            self.rotate = true;
        }
    }

    /// Whether this unauthenticated denial is recorded one by one (true)
    /// or only counted in the second's `summary` (false). A second that is
    /// over writes the previous second's summary first.
    pub(super) fn unauth_admit(&mut self, reason: &'static str, addr: Option<IpAddr>) -> bool {
        let (now, _) = unix_now();
        if now != self.unauth.second {
            self.write_summary();
            self.unauth.second = now;
            self.unauth.recorded = 0;
        }
        if self.unauth.recorded < self.opts.unauthenticated_per_s {
            self.unauth.recorded += 1;
            return true;
        }
        let u = &mut self.unauth;
        u.count += 1;
        self.retime |= u.count == 1;
        *u.by_reason.entry(reason).or_default() += 1;
        match addr {
            Some(a) if u.by_addr.contains_key(&a) || u.by_addr.len() < MAX_SUMMARY_ADDRS => {
                *u.by_addr.entry(a).or_default() += 1;
            }
            _ => u.other_addrs += 1,
        }
        false
    }

    /// The syncer's turn: a summary of a second that is over.
    pub(super) fn summary_if_due(&mut self) {
        if self.unauth.count > 0 && unix_now().0 != self.unauth.second {
            self.write_summary();
            self.unauth.recorded = 0;
            self.unauth.second = unix_now().0;
        }
    }

    /// One `summary` record for the counted denials of `unauth.second`:
    /// the count, by reason, and the 10 client addresses with the most.
    pub(super) fn write_summary(&mut self) {
        let u = std::mem::take(&mut self.unauth);
        if u.count == 0 {
            return;
        }
        let mut addrs: Vec<(String, u64)> = u
            .by_addr
            .into_iter()
            .map(|(a, n)| (a.to_string(), n))
            .collect();
        if u.other_addrs > 0 {
            addrs.push(("other".into(), u.other_addrs));
        }
        addrs.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        addrs.truncate(10);
        let mut rec = Record::new(Phase::Summary);
        rec.decision = Some(Decision::Deny);
        rec.count = Some(u.count);
        rec.by_reason = Some(serde_json::json!(u.by_reason));
        rec.by_client_addr = Some(serde_json::Value::Object(
            addrs
                .into_iter()
                .map(|(a, n)| (a, serde_json::Value::from(n)))
                .collect(),
        ));
        rec.window_start = Some(second_rfc3339(u.second));
        rec.window_end = Some(second_rfc3339(u.second.saturating_add(1)));
        self.ensure_open();
        if self.write(rec).is_err() || !self.flush() {
            tracing::error!(
                count = u.count,
                "a summary of unauthenticated denials could not be written"
            );
        }
    }
}
