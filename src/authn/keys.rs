//! Static PEM public keys of an issuer.

use std::path::Path;

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// Why a public key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than 64 KiB; not a public key")]
    TooLarge { path: String },
    #[error("{path} is not a PEM Ed25519, EC or RSA public key")]
    NotAPublicKey { path: String },
    #[error("{path} holds a {found} key, which none of the issuer's algorithms ({pinned}) verify")]
    WrongFamily {
        path: String,
        found: &'static str,
        pinned: String,
    },
}

/// The family an algorithm belongs to (which kind of key verifies it).
pub fn family_of(alg: Algorithm) -> AlgorithmFamily {
    match alg {
        Algorithm::EdDSA => AlgorithmFamily::Ed,
        Algorithm::ES256 | Algorithm::ES384 => AlgorithmFamily::Ec,
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AlgorithmFamily::Hmac,
        _ => AlgorithmFamily::Rsa,
    }
}

fn family_name(f: AlgorithmFamily) -> &'static str {
    match f {
        AlgorithmFamily::Ed => "Ed25519",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Hmac => "HMAC",
    }
}

/// Loads one PEM public key and checks that one of `pinned` can use it.
pub fn load_public_key(path: &Path, pinned: &[Algorithm]) -> Result<DecodingKey, KeyError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    if meta.len() > 64 * 1024 {
        return Err(KeyError::TooLarge { path: shown });
    }
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    let key = DecodingKey::from_ed_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_rsa_pem(&pem))
        .map_err(|_| KeyError::NotAPublicKey {
            path: shown.clone(),
        })?;
    let family = key.family();
    if !pinned.iter().any(|a| family_of(*a) == family) {
        return Err(KeyError::WrongFamily {
            path: shown,
            found: family_name(family),
            pinned: pinned
                .iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    Ok(key)
}
