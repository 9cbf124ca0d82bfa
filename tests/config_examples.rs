//! Every example in config/ is valid, and the dev one works with the files
//! `serve --dev` generates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use batch_gateway::config::Config;

#[test]
fn every_example_config_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            if let Err(e) = Config::load(&path) {
                panic!("{}: {:?}", path.display(), e.0);
            }
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected dev.toml and production.toml");
    // The Helm chart's default gateway config.
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/batch-gateway/files/gateway.toml");
    if let Err(e) = Config::load(&chart) {
        panic!("{}: {:?}", chart.display(), e.0);
    }
}

#[tokio::test]
async fn the_dev_config_opens_every_file_serve_dev_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = "127.0.0.1:0".parse().unwrap();
    let admin = "127.0.0.1:1".parse().unwrap();
    let (cfg, setup) = batch_gateway::dev::prepare(tmp.path(), listen, admin).unwrap();
    assert_eq!(batch_gateway::preflight::check_files(&cfg), vec![]);
    assert!(cfg.upstream.dry_run);
    // The minted token is accepted by the dev config's own issuer.
    let authn = batch_gateway::authn::Authenticator::new(&cfg.auth, &cfg.teams).unwrap();
    let p = authn
        .verify(&setup.token, batch_gateway::common::now_s())
        .await
        .unwrap();
    assert_eq!(p.teams, vec!["dev-team".to_string()]);
}

#[test]
fn serve_dev_refuses_non_loopback_addresses() {
    let tmp = tempfile::tempdir().unwrap();
    let r = batch_gateway::dev::prepare(
        tmp.path(),
        "0.0.0.0:8080".parse().unwrap(),
        "127.0.0.1:9090".parse().unwrap(),
    );
    assert!(r.is_err());
}
