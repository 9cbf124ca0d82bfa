//! Rotation step by step (see the writer's module doc), its test-only
//! crash points, and retention (`prune` records, then removal).

use super::*;

impl Writer {
    /// Test-only crash points: after `step`, nothing touches a file again.
    pub(super) fn crashed_after(&mut self, step: RotationStep) -> bool {
        if self.opts.crash_after == Some(step) {
            self.crashed = true;
            self.file = None;
            self.available.store(false, Ordering::SeqCst);
        }
        self.crashed
    }

    /// A file past its retention is waiting (looked at once a minute).
    pub(super) fn retention_due(&mut self) -> bool {
        let Some(keep) = self.opts.retention else {
            return false;
        };
        if self
            .retention_checked
            .is_some_and(|t| t.elapsed() < RETENTION_CHECK)
        {
            return false;
        }
        self.retention_checked = Some(Instant::now());
        let cutoff = unix_now().0.saturating_sub(secs(keep));
        rotated_files(&self.path)
            .first()
            .and_then(|f| span_of(f))
            .is_some_and(|s| s.last_ts < cutoff)
    }

    /// Past `rotate_bytes`, or when a rotated file is past its retention:
    /// rotate, in the steps the module names.
    pub(super) fn maybe_rotate(&mut self) {
        self.rotate = false;
        if self.file.is_none() || self.blocked.is_some() || self.crashed {
            return;
        }
        let by_size = self
            .opts
            .rotate_bytes
            .is_some_and(|limit| self.file_len >= limit);
        if !by_size && !self.retention_due() {
            return;
        }
        let Some(first) = self.file_first_seq else {
            return;
        };
        // 1. A final checkpoint; every record of this file durable
        // (answering whoever waits on one).
        self.checkpoint_now();
        if !self.sync() || self.crashed_after(RotationStep::Synced) {
            return;
        }
        // 2. Files past their retention, accounted for in this file.
        if !self.prune() || self.crashed_after(RotationStep::Pruned) {
            return;
        }
        let rotated = rotated_name(&self.path, first);
        let next = next_name(&self.path);
        let dir = folder_of(&self.path).to_path_buf();
        // 3. The next file, opening with its `rotate` record. Should any
        // later step fail, the chain goes back to where this file ends.
        let before = self.committed.clone();
        let old = (self.file.clone(), self.identity);
        let undo = |w: &mut Writer| {
            w.committed = before.clone();
            w.roll_back();
            w.file = old.0.clone();
            w.identity = old.1;
            let _ = std::fs::remove_file(&next);
        };
        let _ = std::fs::remove_file(&next);
        let created = open_private(&next, true).and_then(|f| {
            let m = f.metadata()?;
            Ok((f, (m.dev(), m.ino())))
        });
        let (file, identity) = match created {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "audit rotation cannot create its next file; the live file keeps growing");
                return;
            }
        };
        self.file = Some(Arc::new(file));
        self.identity = Some(identity);
        self.file_len = 0;
        self.file_first_seq = None;
        let follows = rotated
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let rec = self.rotate_record(follows);
        if self.write(rec).is_err() || !self.sync() {
            // `sync` failing made the log unavailable; the old file is
            // intact and a later request reopens it.
            undo(self);
            return;
        }
        if self.crashed_after(RotationStep::NextWritten) {
            return;
        }
        // 4. The live file's records under their rotated name. A link
        // never replaces: a taken name means two chains claim one place.
        if let Err(e) = std::fs::hard_link(&self.path, &rotated) {
            undo(self);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                self.block_on_taken_name(rotated);
            } else {
                tracing::error!(error = %e, "audit rotation failed; the live file keeps growing");
            }
            return;
        }
        if self.crashed_after(RotationStep::Linked) {
            return;
        }
        // 5. The next file becomes the live one.
        if let Err(e) = std::fs::rename(&next, &self.path) {
            let _ = std::fs::remove_file(&rotated);
            undo(self);
            tracing::error!(error = %e, "audit rotation failed; the live file keeps growing");
            return;
        }
        if self.crashed_after(RotationStep::Renamed) {
            return;
        }
        if let Err(e) = sync_dir(&dir) {
            tracing::warn!(error = %e, "cannot sync the audit folder after a rotation");
        }
        self.rotated_bytes += before.file_len;
        tracing::info!(rotated = %rotated.display(), "audit file rotated");
    }

    /// A rotation's target name is taken: fail closed. The live file keeps
    /// every record; a `repair` record says what was found, and requests
    /// are refused until the name is free.
    pub(super) fn block_on_taken_name(&mut self, taken: PathBuf) {
        tracing::error!(name = %taken.display(), "audit rotation target already exists; refusing requests until it is moved away (nothing is replaced)");
        let mut rec = Record::new(Phase::Repair);
        rec.reason = Some("rotation_target_exists".into());
        rec.found = Some(serde_json::json!({
            "file": taken.file_name().map(|n| n.to_string_lossy().into_owned()),
            "live_first_seq": self.file_first_seq,
        }));
        if self.write(rec).is_ok() {
            self.sync();
        }
        self.blocked = Some(taken);
        self.available.store(false, Ordering::SeqCst);
    }

    /// Removes the oldest rotated files whose newest record is past
    /// `retention`, after a `prune` record naming each (its seq range and
    /// last line's hash) and how far the chain's start now goes is
    /// durable. Only files that continue exactly where the chain's known
    /// start ends are removed: a start someone else cut is never covered.
    /// False when the prune record could not be written.
    pub(super) fn prune(&mut self) -> bool {
        let Some(keep) = self.opts.retention else {
            return true;
        };
        let cutoff = unix_now().0.saturating_sub(secs(keep));
        let mut through = self.pruned_through.clone();
        let mut removed = Vec::new();
        // Files a prune record already accounts for, still on disk (a
        // crash came between the record and the removal): removed now.
        let mut leftover = Vec::new();
        for f in rotated_files(&self.path) {
            let Some(span) = span_of(&f) else { break };
            if let Some(t) = &self.pruned_through
                && span.last_seq <= t.seq
            {
                leftover.push((f, span));
                continue;
            }
            if span.last_ts >= cutoff {
                break;
            }
            let (want_seq, want_prev) = match &through {
                Some(t) => (t.seq + 1, t.hash.as_str()),
                None => (1, ZERO_HASH),
            };
            if span.first_seq != want_seq || span.first_prev != want_prev {
                tracing::error!(file = %f.display(), "an audit file past its retention does not continue the chain's start; not removed");
                break;
            }
            through = Some(PrunedThrough {
                seq: span.last_seq,
                hash: span.last_hash.clone(),
            });
            removed.push((f, span));
        }
        if removed.is_empty() {
            self.remove_pruned(&leftover);
            return true;
        }
        let mut rec = Record::new(Phase::Prune);
        rec.removed = Some(serde_json::Value::Array(
            removed
                .iter()
                .map(|(f, s)| {
                    serde_json::json!({
                        "file": f.file_name().map(|n| n.to_string_lossy().into_owned()),
                        "first_seq": s.first_seq,
                        "last_seq": s.last_seq,
                        "last_hash": s.last_hash,
                    })
                })
                .collect(),
        ));
        rec.pruned_through = through.clone();
        if self.write(rec).is_err() || !self.sync() {
            return false;
        }
        self.pruned_through = through;
        if self.crashed_after(RotationStep::PruneRecorded) {
            return false;
        }
        leftover.extend(removed);
        self.remove_pruned(&leftover);
        true
    }

    /// Removes files a durable prune record accounts for.
    pub(super) fn remove_pruned(&mut self, files: &[(PathBuf, Span)]) {
        if files.is_empty() {
            return;
        }
        for (f, span) in files {
            match std::fs::remove_file(f) {
                Ok(()) => {
                    self.rotated_bytes = self.rotated_bytes.saturating_sub(span.bytes);
                    tracing::info!(removed = %f.display(), "audit file past its retention removed");
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %f.display(), "cannot remove an audit file past its retention")
                }
            }
        }
        let _ = sync_dir(folder_of(&self.path));
    }
}
