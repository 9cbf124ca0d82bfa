//! Property tests on the token path: arbitrary input never panics and is
//! never accepted; a real token with any single character changed is never
//! accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batch_gateway::authn::{Authenticator, bearer};
use proptest::prelude::*;
use support::*;

struct Fixture {
    rt: tokio::runtime::Runtime,
    authn: Authenticator,
    token: String,
    _world: World,
}

fn fixture() -> Fixture {
    let world = World::without_batch();
    let cfg = world.config(|_| {});
    let authn = Authenticator::new(&cfg.auth, &cfg.teams).unwrap();
    let token = world.token("growth");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The unmutated token is accepted: the property below is not vacuous.
    assert!(rt.block_on(authn.verify(&token, now())).is_ok());
    Fixture {
        rt,
        authn,
        token,
        _world: world,
    }
}

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic_and_never_verify(s in ".{0,600}") {
        let f = fixture_once();
        prop_assert!(f.rt.block_on(f.authn.verify(&s, now())).is_err());
    }

    #[test]
    fn arbitrary_authorization_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(&bytes) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        let _ = bearer(&h);
    }

    #[test]
    fn a_token_with_one_character_changed_never_verifies(pos in any::<prop::sample::Index>(), pick in any::<prop::sample::Index>()) {
        let f = fixture_once();
        let mut bytes = f.token.clone().into_bytes();
        let i = pos.index(bytes.len());
        let mut c = B64URL[pick.index(B64URL.len())];
        if c == bytes[i] {
            c = if c == b'A' { b'B' } else { b'A' };
        }
        bytes[i] = c;
        let mutated = String::from_utf8(bytes).unwrap();
        prop_assert!(f.rt.block_on(f.authn.verify(&mutated, now())).is_err(), "accepted {mutated}");
    }

    #[test]
    fn a_token_with_bytes_appended_or_cut_never_verifies(cut in 1usize..40, tail in "[A-Za-z0-9_.-]{1,8}") {
        let f = fixture_once();
        let shorter = &f.token[..f.token.len() - cut];
        prop_assert!(f.rt.block_on(f.authn.verify(shorter, now())).is_err());
        let longer = format!("{}{tail}", f.token);
        prop_assert!(f.rt.block_on(f.authn.verify(&longer, now())).is_err());
    }
}

fn fixture_once() -> &'static Fixture {
    static F: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    F.get_or_init(fixture)
}
