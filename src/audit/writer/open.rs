//! Opening the live file: continuing the chain from the newest record on
//! disk, sealing a torn line, finishing an interrupted rotation, noticing a
//! file removed or replaced under the writer.

use super::*;

impl Writer {
    pub(super) fn ensure_open(&mut self) {
        if self.crashed {
            return;
        }
        if self.file.is_none() {
            if let Err(e) = self.open_and_seal() {
                self.fail("open", &e);
                return;
            }
            // After a failure, writing is proven by writing: the gap is
            // recorded, durably, before anything else is accepted.
            if let Some((since, error)) = self.failed_since.clone() {
                let mut rec = Record::new(Phase::Repair);
                rec.reason = Some("unwritable".into());
                rec.found = Some(serde_json::json!({ "since": since, "error": error }));
                if self.write(rec).is_err() || !self.sync() {
                    return;
                }
                self.failed_since = None;
            }
        }
        if self.usable() && !self.available.swap(true, Ordering::SeqCst) {
            tracing::info!(path = %self.path.display(), seq = self.seq, "audit file open");
        }
    }

    /// The live file was removed or replaced under us: writing on would
    /// put records where nobody finds them. Reopen, and say so.
    pub(super) fn check_identity(&mut self) {
        let Some(ours) = self.identity else { return };
        let now = std::fs::metadata(&self.path)
            .map(|m| (m.dev(), m.ino()))
            .ok();
        if now == Some(ours) {
            return;
        }
        tracing::error!(path = %self.path.display(), "the audit file was removed or replaced; continuing the chain in a new file");
        // What was written to it still counts: make it durable (answering
        // whoever waits on it) before letting go of it.
        if !self.sync() {
            return;
        }
        self.file = None;
        self.identity = None;
        self.ensure_open();
        let mut rec = Record::new(Phase::Repair);
        rec.reason = Some("file_replaced".into());
        rec.found = Some(serde_json::json!({
            "missing_file": self.path.display().to_string(),
            "last_seq_before": self.seq,
        }));
        if self.write(rec).is_ok() {
            self.sync();
        }
    }

    /// At start: undoes what a rotation interrupted by a crash left (see
    /// the module's steps). Its records are all in place either way.
    pub(super) fn finish_interrupted_rotation(&self) -> std::io::Result<()> {
        let dir = folder_of(&self.path);
        let next = next_name(&self.path);
        match std::fs::remove_file(&next) {
            Ok(()) => {
                tracing::warn!(file = %next.display(), "removed the next file of a rotation that did not finish");
                sync_dir(dir)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let Ok(live) = std::fs::metadata(&self.path) else {
            return Ok(());
        };
        let first = crate::audit::lines::first_seq(&self.path).ok().flatten();
        let Some(first) = first else { return Ok(()) };
        let rotated = rotated_name(&self.path, first);
        if let Ok(r) = std::fs::metadata(&rotated)
            && (r.dev(), r.ino()) == (live.dev(), live.ino())
        {
            // Linked, not yet replaced: the records live on under the
            // rotated name; the live name goes.
            std::fs::remove_file(&self.path)?;
            sync_dir(dir)?;
            tracing::warn!(rotated = %rotated.display(), "finished a rotation interrupted after its link");
        }
        Ok(())
    }

    /// Opens the file for append and continues the chain from the newest
    /// record on disk: the live file's last line, or, when the live file
    /// holds no record yet (a first start after a rotation), the newest
    /// rotated file's, in which case the live file opens with a `rotate`
    /// record naming it. A torn last line (a crash mid-write) is cut off
    /// and sealed by a `repair` record saying what was found.
    pub(super) fn open_and_seal(&mut self) -> std::io::Result<()> {
        private_dir(folder_of(&self.path))?;
        if !self.started {
            self.finish_interrupted_rotation()?;
        }
        let mut file = open_private(&self.path, false)?;
        let meta = file.metadata()?;
        let tail = read_tail(&mut file)?;
        let mut torn: Option<(PathBuf, Vec<u8>)> = None;
        let live_len = meta.len() - tail.torn.len() as u64;
        if !tail.torn.is_empty() {
            file.set_len(live_len)?;
            file.sync_data()?;
            torn = Some((self.path.clone(), tail.torn));
        }
        let mut follows = None;
        if let Some(last) = &tail.last_line {
            self.seq = seq_of(last)?;
            self.prev = hex::encode(Sha256::digest(last));
            if !self.started {
                self.pruned_through = pruned_state(&self.path);
            }
        } else if !self.started
            && let Some(newest) = rotated_files(&self.path).pop()
        {
            let mut f = OpenOptions::new().read(true).write(true).open(&newest)?;
            let t = read_tail(&mut f)?;
            if !t.torn.is_empty() {
                let len = f.metadata()?.len() - t.torn.len() as u64;
                f.set_len(len)?;
                f.sync_data()?;
                torn = Some((newest.clone(), t.torn));
            }
            let last = t.last_line.ok_or_else(|| {
                std::io::Error::other(format!(
                    "the rotated audit file {} holds no record",
                    newest.display()
                ))
            })?;
            self.seq = seq_of(&last)?;
            self.prev = hex::encode(Sha256::digest(&last));
            self.pruned_through = pruned_state(&newest);
            follows = newest.file_name().map(|n| n.to_string_lossy().into_owned());
        }
        if !self.started {
            self.rotated_bytes = rotated_size(&self.path);
        }
        self.started = true;
        self.file_first_seq =
            crate::audit::lines::first_seq(&self.path).map_err(std::io::Error::other)?;
        self.file_len = live_len;
        self.identity = Some((meta.dev(), meta.ino()));
        self.commit();
        self.file = Some(Arc::new(file));
        if let Some(name) = follows {
            let rec = self.rotate_record(name);
            self.write(rec)
                .map_err(|_| std::io::Error::other("rotate record write"))?;
            if !self.sync() {
                return Err(std::io::Error::other("rotate record fsync"));
            }
        }
        if let Some((path, torn)) = torn {
            let mut rec = Record::new(Phase::Repair);
            rec.reason = Some("torn_last_line".into());
            rec.found = Some(serde_json::json!({
                "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
                "torn_bytes": torn.len(),
                "torn_sha256": hex::encode(Sha256::digest(&torn)),
                "torn_text": crate::common::bounded(&String::from_utf8_lossy(&torn), 512),
            }));
            self.write(rec)
                .map_err(|_| std::io::Error::other("repair write"))?;
            if !self.sync() {
                return Err(std::io::Error::other("repair fsync"));
            }
            tracing::warn!(
                bytes = torn.len(),
                file = %path.display(),
                "audit file ended in a torn line; sealed it with a repair record"
            );
        }
        Ok(())
    }

    /// The first record of a file that continues `follows`.
    pub(super) fn rotate_record(&self, follows: String) -> Record {
        let mut rec = Record::new(Phase::Rotate);
        rec.follows = Some(follows);
        rec.pruned_through = self.pruned_through.clone();
        rec
    }
}
