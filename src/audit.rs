//! Steps 7 and 9 (and every denial): the audit trail.
//!
//! Records are typed data serialized by serde, one JSON object per line,
//! chained by `prev` = SHA-256 of the previous line. Requests write their
//! records under one lock, a turn's records in one `write`; records that
//! must be durable (the `attempt` before anything goes upstream) are waited
//! for until a syncer thread's `fsync` returned, and one `fsync` covers
//! every record written before it began. Diagnostics (`tracing`) never
//! share this sink.
//!
//! This file is only the module list and what the rest of the crate uses:
//! `record` (the schema, pure data), `keys` (the HMAC key), `lines`
//! (reading the trail's lines, forwards and backwards), `file` (the files'
//! lifecycle on disk), `writer` (the group-commit writer and its syncer),
//! `sched` (the syncer thread's priority), `verify` and `report`
//! (offline). The children name each other, never this file.

pub mod anomalies;
pub mod chains;
mod file;
pub mod html;
pub mod keys;
pub mod lines;
pub mod record;
pub mod report;
mod sched;
pub mod verify;
mod writer;

pub use file::{check_writable, newest_first, rotated_files};
pub use keys::{HmacKey, HmacKeyError, Signer};
pub use record::{
    Caller, Decision, Phase, PrunedThrough, Record, Unverified, UpstreamOutcome, ZERO_HASH,
    checkpoint_message, record_unix_ts,
};
pub use writer::{AuditError, AuditLog, Options};

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    #[test]
    fn fingerprints_are_16_hex_of_hmac_sha256() {
        let raw = b"0123456789abcdef0123456789abcdef";
        let k = HmacKey::from_bytes(raw.to_vec());
        let a = k.fingerprint(b"rk_1");
        // The kept, already keyed state gives what a fresh HMAC gives,
        // every time (it is cloned, never advanced).
        let mut fresh = Hmac::<Sha256>::new_from_slice(raw).unwrap();
        fresh.update(b"rk_1");
        assert_eq!(a, hex::encode(&fresh.finalize().into_bytes()[..8]));
        assert_eq!(k.fingerprint(b"rk_1"), a);
        assert_eq!(a.len(), 16);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a, k.fingerprint(b"rk_2"));
        assert_eq!(format!("{k:?}"), "HmacKey([REDACTED])");
    }

    #[test]
    fn a_short_hmac_key_is_refused_and_one_newline_stripped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "x".repeat(31) + "\n").unwrap();
        assert!(matches!(
            HmacKey::load(&p),
            Err(HmacKeyError::TooShort { .. })
        ));
        std::fs::write(&p, "x".repeat(32) + "\n").unwrap();
        let k = HmacKey::load(&p).unwrap();
        assert_eq!(
            k.fingerprint(b"d"),
            HmacKey::from_bytes(b"x".repeat(32)).fingerprint(b"d")
        );
    }

    #[tokio::test]
    async fn records_are_chained_and_numbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/audit.jsonl");
        let log = AuditLog::open(p.clone(), Options::default());
        assert!(log.is_available());
        for phase in [Phase::Denied, Phase::Attempt, Phase::Outcome] {
            log.append(Record::new(phase), phase == Phase::Attempt)
                .await
                .unwrap();
        }
        drop(log);
        let v = verify::verify(&[p], &verify::VerifyOptions::default()).unwrap();
        assert_eq!((v.records, v.first_seq, v.last_seq), (3, Some(1), Some(3)));
    }
}
