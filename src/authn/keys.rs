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
    #[error("{path} holds a {bits}-bit RSA key; RSA keys must be 2048 to 8192 bits")]
    RsaSize { path: String, bits: u32 },
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
    if family == AlgorithmFamily::Rsa {
        let bits = key
            .try_get_as_bytes()
            .ok()
            .and_then(|der| aws_lc_rs::signature::RsaParameters::public_modulus_len(der).ok())
            .ok_or_else(|| KeyError::NotAPublicKey {
                path: shown.clone(),
            })?;
        if !rsa_size_ok(bits) {
            return Err(KeyError::RsaSize { path: shown, bits });
        }
    }
    Ok(key)
}

/// The RSA modulus sizes the verifier accepts (aws-lc's 2048-8192 bits):
/// a key outside them would fail every signature, so it is refused when
/// loaded instead.
pub fn rsa_size_ok(bits: u32) -> bool {
    (2048..=8192).contains(&bits)
}

/// Size in bits of a big-endian unsigned modulus.
pub fn modulus_bits(n: &[u8]) -> u32 {
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    let top = 8 - n[0].leading_zeros();
    u32::try_from(n.len() - 1)
        .unwrap_or(u32::MAX / 8)
        .saturating_mul(8)
        .saturating_add(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_ignore_leading_zeros() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[1]), 1);
        assert_eq!(modulus_bits(&[0, 0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x7f; 256]), 2047);
        let mut n = vec![0u8; 257];
        n[1] = 0xc5;
        assert_eq!(modulus_bits(&n), 2048);
        assert!(rsa_size_ok(modulus_bits(&n)));
        assert!(!rsa_size_ok(modulus_bits(&[0xff; 128])));
        assert!(!rsa_size_ok(modulus_bits(&[0xff; 1025])));
    }

    #[test]
    fn rsa_pem_keys_outside_2048_to_8192_bits_are_refused_when_loaded() {
        use rsa::pkcs8::{EncodePublicKey, LineEnding};
        let dir = tempfile::tempdir().unwrap();
        for (bits, ok) in [(1024usize, false), (2048, true)] {
            let k = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).unwrap();
            let pem = k.to_public_key().to_public_key_pem(LineEnding::LF).unwrap();
            let path = dir.path().join(format!("rsa{bits}.pem"));
            std::fs::write(&path, pem).unwrap();
            match load_public_key(&path, &[Algorithm::RS256]) {
                Ok(_) => assert!(ok, "{bits}-bit key accepted"),
                Err(e) => {
                    assert!(!ok, "{bits}-bit key refused: {e}");
                    assert!(matches!(e, KeyError::RsaSize { bits: 1024, .. }), "{e}");
                    assert!(e.to_string().contains("1024-bit RSA key"), "{e}");
                }
            }
        }
    }
}
