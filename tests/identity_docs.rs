//! Every identity provider section of docs/identity-providers.md holds a
//! complete config that loads, and the token shown under it (signed here
//! with a key of the pinned algorithm, times shifted to now) makes the
//! caller a member of the team its comment names, allowed on the project;
//! the same token from another key is refused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batch_gateway::config::Config;
use serde_json::Value;
use support::*;

struct Section {
    title: String,
    expect_team: String,
    expect_project: String,
    config: String,
    header: Value,
    claims: Value,
}

/// The `###` sections under "Identity providers, one by one".
fn sections(doc: &str) -> Vec<Section> {
    let start = doc
        .find("## Identity providers, one by one")
        .expect("the section exists");
    let body = &doc[start..];
    let mut out = Vec::new();
    for part in body.split("\n### ").skip(1) {
        let title = part.lines().next().unwrap().trim().to_string();
        let expect = part
            .split("<!-- expect: ")
            .nth(1)
            .and_then(|r| r.split(" -->").next())
            .unwrap_or_else(|| panic!("{title}: no expect comment"));
        let (team, project) = expect.split_once(", ").unwrap();
        let blocks: Vec<(&str, &str)> = part
            .split("```")
            .skip(1)
            .step_by(2)
            .map(|b| b.split_once('\n').unwrap())
            .collect();
        let pick = |lang: &str, n: usize| {
            blocks
                .iter()
                .filter(|(l, _)| *l == lang)
                .nth(n)
                .unwrap_or_else(|| panic!("{title}: no {lang} block {n}"))
                .1
                .to_string()
        };
        out.push(Section {
            title: title.clone(),
            expect_team: team.strip_prefix("team ").unwrap().to_string(),
            expect_project: project.strip_prefix("project ").unwrap().to_string(),
            config: pick("toml", 0),
            header: serde_json::from_str(&pick("json", 0)).unwrap(),
            claims: serde_json::from_str(&pick("json", 1)).unwrap(),
        });
    }
    out
}

/// The claims with `iat`/`nbf`/`exp` moved so that the token was issued
/// now, its lifetime kept.
fn shifted(mut claims: Value) -> Value {
    let iat = claims["iat"].as_i64().unwrap();
    let delta = now() - iat;
    for name in ["iat", "nbf", "exp"] {
        if let Some(v) = claims.get(name).and_then(Value::as_i64) {
            claims[name] = (v + delta).into();
        }
    }
    claims
}

#[tokio::test]
async fn every_identity_provider_snippet_admits_the_token_it_shows() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/identity-providers.md"),
    )
    .unwrap();
    let sections = sections(&doc);
    let titles: Vec<&str> = sections.iter().map(|s| s.title.as_str()).collect();
    for want in ["Kubernetes", "SPIRE", "Keycloak", "Okta", "Entra", "Auth0"] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "{want}: {titles:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for s in &sections {
        let mut cfg = Config::parse(&s.config, &dir.path().join("gateway.toml"))
            .unwrap_or_else(|e| panic!("{}: {:?}", s.title, e.0));
        let alg: jsonwebtoken::Algorithm = s.header["alg"].as_str().unwrap().parse().unwrap();
        let key = SigningKey::generate(alg);
        let pem = dir.path().join(format!("{alg:?}.pem"));
        std::fs::write(&pem, &key.public_pem).unwrap();
        // The key the IdP would publish, given as a file instead of fetched.
        let issuer = &mut cfg.auth.issuers[0];
        assert!(issuer.algorithms.contains(&alg), "{}", s.title);
        issuer.jwks = None;
        issuer.public_keys = vec![pem];
        let authn = batch_gateway::authn::Authenticator::new(&cfg.auth, &cfg.teams).unwrap();
        let claims = shifted(s.claims.clone()).to_string();
        let token = sign_raw(&key, &s.header.to_string(), &claims);
        let p = authn
            .verify(&token, now())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", s.title));
        assert!(
            p.teams.contains(&s.expect_team),
            "{}: {:?}",
            s.title,
            p.teams
        );
        let permit = batch_gateway::policy::authorize(
            &cfg,
            &p,
            &[s.expect_project.as_str()],
            batch_gateway::route::Action::CampaignsDelete,
            DELETE,
        );
        assert!(permit.is_ok(), "{}: {permit:?}", s.title);
        // The check can fail: another key's signature is refused.
        let other = SigningKey::generate(alg);
        let forged = sign_raw(&other, &s.header.to_string(), &claims);
        assert!(authn.verify(&forged, now()).await.is_err(), "{}", s.title);
    }
}
