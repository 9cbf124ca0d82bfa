//! The trail's keys: the HMAC key behind `token_fp` and `key_fp`, and the
//! Ed25519 key that signs checkpoints.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretBox};
use sha2::Sha256;

use super::record::checkpoint_message;

/// The key behind `token_fp` and `key_fp`, held as HMAC-SHA256 already
/// keyed (the key's inner and outer blocks absorbed), so that each
/// fingerprint hashes only its data. That state is as sensitive as the key
/// and, like the key before it, lives as long as the process and prints
/// nothing; the raw key bytes are zeroized once it is built.
#[derive(Clone)]
pub struct HmacKey(Hmac<Sha256>);

#[derive(Debug, thiserror::Error)]
pub enum HmacKeyError {
    #[error("cannot read the audit HMAC key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit HMAC key in {path} is shorter than 32 bytes")]
    TooShort { path: String },
}

impl HmacKey {
    /// The file's bytes, one trailing newline stripped, at least 32 bytes.
    pub fn load(path: &Path) -> Result<Self, HmacKeyError> {
        let bytes = crate::keyfile::read_secret(path).map_err(|source| HmacKeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if bytes.len() < 32 {
            return Err(HmacKeyError::TooShort {
                path: path.display().to_string(),
            });
        }
        Ok(Self::from_bytes(bytes.to_vec()))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        let key = SecretBox::new(Box::new(bytes));
        // HMAC takes keys of any length (RFC 2104): for `Hmac`,
        // `new_from_slice` never fails; the fallback is unreachable.
        let mac = Hmac::<Sha256>::new_from_slice(key.expose_secret())
            .unwrap_or_else(|_| Hmac::<Sha256>::new(&Default::default()));
        HmacKey(mac)
    }

    /// HMAC-SHA256 of `data`, the first 16 lowercase hex characters.
    pub fn fingerprint(&self, data: &[u8]) -> String {
        let mut mac = self.0.clone();
        mac.update(data);
        hex::encode(&mac.finalize().into_bytes()[..8])
    }
}

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey([REDACTED])")
    }
}

/// The Ed25519 key that signs checkpoints.
pub struct Signer(ring::signature::Ed25519KeyPair);

impl Signer {
    /// Reads an Ed25519 private key, PKCS#8 PEM.
    pub fn load(path: &Path) -> Result<Signer, String> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|_| format!("{} is not a PKCS#8 PEM private key", path.display()))?;
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map(Signer)
            .map_err(|_| format!("{} is not an Ed25519 private key", path.display()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Option<Signer> {
        ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .ok()
            .map(Signer)
    }

    /// base64url (unpadded) Ed25519 signature over a checkpoint's
    /// [`checkpoint_message`].
    pub fn sign_checkpoint(&self, seq: u64, ts: &str, head: &str) -> String {
        let msg = checkpoint_message(seq, ts, head);
        URL_SAFE_NO_PAD.encode(self.0.sign(&msg).as_ref())
    }

    pub fn public_key(&self) -> Vec<u8> {
        use ring::signature::KeyPair;
        self.0.public_key().as_ref().to_vec()
    }
}
