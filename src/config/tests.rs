use super::*;
use std::time::Duration;

pub(crate) const BASE: &str = r#"
[auth]
audiences = ["batch-gateway"]
[[auth.issuers]]
issuer = "https://idp.test"
algorithms = ["EdDSA"]
public_keys = ["keys/idp.pem"]
[secrets]
file = "secrets.toml"
[audit]
file = "audit/audit.jsonl"
hmac_key_file = "hmac.key"
[[projects]]
alias = "marketing-prod"
secret_path = "batch/marketing-prod"
[[teams]]
name = "growth"
[[teams.grants]]
project = "marketing-prod"
actions = ["campaigns.delete"]
"#;

fn parse(extra: &str) -> Result<Config, ConfigErrors> {
    // TOML tables may appear once: extra text that re-opens a table is
    // merged by editing the document instead.
    let mut doc: toml::Table = BASE.parse().unwrap();
    let add: toml::Table = extra.parse().unwrap();
    merge(&mut doc, add);
    Config::parse(
        &toml::to_string(&doc).unwrap(),
        Path::new("/etc/bgw/gateway.toml"),
    )
}

fn merge(into: &mut toml::Table, add: toml::Table) {
    for (k, v) in add {
        match (into.get_mut(&k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (Some(toml::Value::Array(a)), toml::Value::Array(b))
                if a.iter().all(toml::Value::is_table) && b.iter().all(toml::Value::is_table) =>
            {
                for (i, item) in b.into_iter().enumerate() {
                    match (a.get_mut(i), item) {
                        (Some(toml::Value::Table(x)), toml::Value::Table(y)) => merge(x, y),
                        (_, item) => a.push(item),
                    }
                }
            }
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

fn problems(extra: &str) -> Vec<String> {
    match parse(extra) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|p| p.to_string()).collect(),
    }
}

#[test]
fn the_minimal_config_gets_the_documented_defaults() {
    let c = parse("").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.server.max_body_bytes, 65536);
    assert_eq!(c.server.max_header_bytes, 16384);
    assert_eq!(c.server.max_concurrent_requests, 1024);
    assert_eq!(c.upstream.base_url.to_string(), "https://api.batch.com/");
    assert_eq!(c.upstream.request_timeout, Duration::from_secs(10));
    assert_eq!(c.auth.leeway_s, 30);
    assert_eq!(c.auth.max_token_lifetime_s, 900);
    assert_eq!(c.auth.team_claim.as_str(), "team");
    assert_eq!(c.secrets.cache_ttl, Duration::from_secs(300));
    assert_eq!(c.secrets.stale_if_error, Duration::from_secs(3600));
    assert!(!c.upstream.dry_run);
}

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let c = parse("").unwrap();
    assert_eq!(c.audit.file, Path::new("/etc/bgw/audit/audit.jsonl"));
    assert_eq!(
        c.auth.issuers[0].public_keys[0],
        Path::new("/etc/bgw/keys/idp.pem")
    );
    let SecretsBackend::File(f) = &c.secrets.backend else {
        panic!("not file")
    };
    assert_eq!(f, Path::new("/etc/bgw/secrets.toml"));
    let c = parse("[audit]\nfile = \"/var/audit.jsonl\"").unwrap();
    assert_eq!(c.audit.file, Path::new("/var/audit.jsonl"));
}

#[test]
fn every_unknown_key_is_reported_with_its_path_in_one_run() {
    let p = problems(
        "[server]\nbogus = 1\n[upstream]\nretries = 3\n[[teams]]\n[[teams.grants]]\nactons = [\"x\"]\n",
    );
    assert!(p.iter().any(|s| s == "server.bogus: unknown key"), "{p:?}");
    assert!(
        p.iter().any(|s| s == "upstream.retries: unknown key"),
        "{p:?}"
    );
    assert!(
        p.iter().any(|s| s.contains("teams.0.grants.0.actons")),
        "{p:?}"
    );
}

#[test]
fn semantic_problems_are_reported_together_with_unknown_keys() {
    let p = problems(
        "[upstream]\nbogus = true\n[[teams]]\n[[teams.grants]]\nproject = \"ghost\"\nactions = [\"campaigns.nuke\"]\n",
    );
    assert!(p.iter().any(|s| s.contains("upstream.bogus")), "{p:?}");
    assert!(
        p.iter()
            .any(|s| s.contains("teams[0].grants[0].project") && s.contains("ghost")),
        "{p:?}"
    );
    assert!(p.iter().any(|s| s.contains("campaigns.nuke")), "{p:?}");
}

#[test]
fn vault_backends_are_validated_per_auth_method() {
    let v = |extra: &str| {
        parse(&format!(
            "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://vault:8200\"\n{extra}"
        ))
    };
    let c = v("").unwrap();
    let SecretsBackend::Vault(cfg) = &c.secrets.backend else {
        panic!("not vault")
    };
    assert_eq!(cfg.kv_mount, "secret");
    assert_eq!(cfg.request_timeout, Duration::from_secs(2));
    assert!(matches!(cfg.auth, VaultAuth::Token { token_file: None }));
    let c = v("auth = \"kubernetes\"\nkubernetes_role = \"batch-gateway\"").unwrap();
    let SecretsBackend::Vault(cfg) = &c.secrets.backend else {
        panic!("not vault")
    };
    match &cfg.auth {
        VaultAuth::Kubernetes {
            role,
            jwt_file,
            mount,
        } => {
            assert_eq!(
                (role.as_str(), mount.as_str()),
                ("batch-gateway", "kubernetes")
            );
            assert_eq!(
                jwt_file,
                Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        v("auth = \"approle\"\napprole_role_id = \"r\"\napprole_secret_id_file = \"sid\"").is_ok()
    );
    for (extra, key) in [
        ("auth = \"kubernetes\"", "secrets.vault.kubernetes_role"),
        (
            "auth = \"approle\"\napprole_role_id = \"r\"",
            "secrets.vault",
        ),
        ("auth = \"ldap\"", "secrets.vault.auth"),
        (
            "token_file = \"t\"\nauth = \"approle\"\napprole_role_id = \"r\"\napprole_secret_id_file = \"s\"",
            "secrets.vault.token_file",
        ),
        ("request_timeout_ms = 0", "secrets.vault.request_timeout_ms"),
        ("kv_mount = \"../x\"", "secrets.vault.kv_mount"),
    ] {
        let p = problems(&format!(
            "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://vault:8200\"\n{extra}"
        ));
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
    let p = problems(
        "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"http://vault:8200\"",
    );
    assert!(
        p.iter().any(|s| s.starts_with("secrets.vault.address")),
        "{p:?}"
    );
    let p = problems("[secrets]\nbackend = \"vault\"");
    assert!(p.iter().any(|s| s.starts_with("secrets.vault")), "{p:?}");
    let p = problems("[secrets.vault]\naddress = \"https://v\"");
    assert!(
        p.iter().any(|s| s.contains("only meaningful with backend")),
        "{p:?}"
    );
}

#[test]
fn limits_and_tls_keys_are_parsed_and_checked() {
    let c = parse(
        "[server.tls]\ncert_file = \"tls/cert.pem\"\nkey_file = \"tls/key.pem\"\n[[projects]]\nupstream_rate_per_s = 10\n[[teams]]\n[[teams.grants]]\nrate_per_minute = 60\ndaily_quota = 200",
    )
    .unwrap();
    let tls = c.server.tls.as_ref().unwrap();
    assert_eq!(tls.cert_file, Path::new("/etc/bgw/tls/cert.pem"));
    assert!(tls.client_ca_file.is_none());
    assert_eq!(c.projects[0].upstream_rate_per_s, Some(10));
    assert_eq!(c.teams[0].grants[0].rate_per_minute, Some(60));
    assert_eq!(c.teams[0].grants[0].daily_quota, Some(200));
    for (extra, key) in [
        ("[server.tls]\ncert_file = \"c.pem\"", "server.tls.key_file"),
        (
            "[server.tls]\nkey_file = \"k.pem\"\nbogus = 1",
            "server.tls.bogus",
        ),
        (
            "[[teams]]\n[[teams.grants]]\nrate_per_minute = 0",
            "teams[0].grants[0].rate_per_minute",
        ),
        (
            "[[teams]]\n[[teams.grants]]\ndaily_quota = 0",
            "teams[0].grants[0].daily_quota",
        ),
        (
            "[[projects]]\nupstream_rate_per_s = 0",
            "projects[0].upstream_rate_per_s",
        ),
    ] {
        let p = problems(extra);
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
    // keep_files deleted records by count, which let floods push real
    // records off the disk: a config still naming it is refused, and told
    // what replaced it.
    let p = problems("[audit]\nkeep_files = 30");
    assert!(
        p.iter().any(|s| s.starts_with("audit.keep_files")
            && s.contains("retention_days")
            && s.contains("max_total_bytes")),
        "{p:?}"
    );
}

#[test]
fn hmac_none_and_unknown_algorithms_cannot_be_pinned() {
    for alg in ["HS256", "HS512", "none", "ES512", "eddsa"] {
        let p = problems(&format!("[[auth.issuers]]\nalgorithms = [\"{alg}\"]"));
        assert!(
            p.iter()
                .any(|s| s.contains("algorithms") && s.contains(alg)),
            "{alg}: {p:?}"
        );
    }
}

#[test]
fn unsafe_or_impossible_values_are_refused() {
    for (extra, key) in [
        (
            "[server]\nmax_header_bytes = 1024",
            "server.max_header_bytes",
        ),
        ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
        ("[server]\nlisten = \"localhost\"", "server.listen"),
        (
            "[server]\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"",
            "server.admin_listen",
        ),
        (
            "[upstream]\nbase_url = \"http://api.batch.com\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nbase_url = \"https://api.batch.com/?x=1\"",
            "upstream.base_url",
        ),
        (
            "[upstream]\nrequest_timeout_ms = 0",
            "upstream.request_timeout_ms",
        ),
        ("[auth]\naudiences = []", "auth.audiences"),
        ("[secrets]\nbackend = \"s3\"", "secrets.backend"),
        ("[log]\nformat = \"xml\"", "log.format"),
        (
            "[[projects]]\nalias = \"batch/marketing-prod\"",
            "projects[0].alias",
        ),
        (
            "[[projects]]\n[[projects]]\nalias = \"marketing-prod\"\nsecret_path = \"x\"",
            "projects[1].alias",
        ),
        (
            "[[teams]]\n[[teams.grants]]\nactions = []",
            "teams[0].grants[0].actions",
        ),
    ] {
        let p = problems(extra);
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
}

#[test]
fn missing_sections_are_named() {
    let p = match Config::parse("", Path::new("/x/gateway.toml")) {
        Err(e) => e.0.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        Ok(_) => vec![],
    };
    for key in ["auth", "secrets", "audit"] {
        assert!(p.contains(&key.to_string()), "{p:?}");
    }
}

#[test]
fn jwks_keys_need_an_https_url_and_sane_intervals() {
    let c =
        parse("[[auth.issuers]]\njwks_url = \"https://idp.test/jwks\"\ntyp = \"at+jwt\"").unwrap();
    let j = c.auth.issuers[0].jwks.as_ref().unwrap();
    assert_eq!(
        (j.refresh, j.min_refetch, j.stale_max),
        (
            Duration::from_secs(300),
            Duration::from_secs(30),
            Duration::from_secs(3600)
        )
    );
    assert_eq!(c.auth.issuers[0].typ, ["at+jwt"]);
    assert_eq!(c.auth.replay_cache_size, 1_000_000);
    for (extra, key) in [
        (
            "[[auth.issuers]]\njwks_url = \"http://idp.test/jwks\"",
            "auth.issuers[0].jwks_url",
        ),
        (
            "[[auth.issuers]]\njwks_refresh_s = 10",
            "auth.issuers[0].jwks_refresh_s",
        ),
        (
            "[[auth.issuers]]\njwks_url = \"https://i/j\"\njwks_min_refetch_s = 0",
            "auth.issuers[0].jwks_min_refetch_s",
        ),
        ("[auth]\nreplay_cache_size = 0", "auth.replay_cache_size"),
    ] {
        let p = problems(extra);
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
    // An issuer may use JWKS alone.
    let mut doc: toml::Table = BASE.parse().unwrap();
    let mut iss = doc["auth"]["issuers"][0].as_table().unwrap().clone();
    iss.remove("public_keys");
    iss.insert("jwks_url".into(), "https://idp.test/jwks".into());
    doc["auth"]
        .as_table_mut()
        .unwrap()
        .insert("issuers".into(), toml::Value::Array(vec![iss.into()]));
    assert!(Config::parse(&toml::to_string(&doc).unwrap(), Path::new("/x/g.toml")).is_ok());
}

#[test]
fn audit_keys_have_documented_defaults_and_bounds() {
    let c = parse("").unwrap();
    assert_eq!(c.audit.rotate_bytes, 104_857_600);
    assert_eq!(c.audit.retention_days, 0, "never removed unless asked");
    assert_eq!(c.audit.max_total_bytes, 0, "no budget unless asked");
    assert_eq!(c.audit.unauthenticated_records_per_s, 20);
    assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(60));
    assert!(!c.audit.stdout);
    assert!(c.audit.signing_key_file.is_none());
    let c = parse("[audit]\nsigning_key_file = \"keys/audit.pem\"\nstdout = true").unwrap();
    assert_eq!(
        c.audit.signing_key_file.as_deref(),
        Some(Path::new("/etc/bgw/keys/audit.pem"))
    );
    for (extra, key) in [
        ("[audit]\nrotate_bytes = 10", "audit.rotate_bytes"),
        (
            "[audit]\ncheckpoint_interval_s = 0",
            "audit.checkpoint_interval_s",
        ),
        ("[audit]\nmax_total_bytes = 4096", "audit.max_total_bytes"),
        ("[audit]\nretention_days = 100000", "audit.retention_days"),
    ] {
        let p = problems(extra);
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
}

#[test]
fn shared_state_is_absent_by_default_and_gets_its_documented_defaults() {
    assert_eq!(parse("").unwrap().shared_state, None);
    let c = parse("[shared_state]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"").unwrap();
    let s = c.shared_state.unwrap();
    assert_eq!(s.target, RedisTarget::Url("redis://127.0.0.1:6379".into()));
    assert_eq!(s.key_prefix, "bgw:");
    assert_eq!(s.timeout, Duration::from_millis(25));
    assert_eq!(s.fallback_replicas, 2);
    let c = parse(
        "[shared_state]\nbackend = \"redis\"\nsentinel_urls = [\"rediss://s0:26379\", \"rediss://s1:26379\"]\n\
         sentinel_master = \"bgw\"\nca_file = \"redis-ca.pem\"\nusername = \"gw\"\npassword_file = \"pw\"\n\
         key_prefix = \"bgw:prod:\"\ntimeout_ms = 40\nfallback_replicas = 6",
    )
    .unwrap();
    let s = c.shared_state.clone().unwrap();
    assert!(
        matches!(s.target, RedisTarget::Sentinel { ref urls, ref master } if urls.len() == 2 && master == "bgw")
    );
    assert_eq!(
        s.ca_file.as_deref(),
        Some(Path::new("/etc/bgw/redis-ca.pem"))
    );
    assert_eq!(s.password_file.as_deref(), Some(Path::new("/etc/bgw/pw")));
    assert_eq!(
        (s.timeout, s.fallback_replicas),
        (Duration::from_millis(40), 6)
    );
    assert!(
        c.key_files()
            .iter()
            .any(|(k, _)| k == "shared_state.password_file"),
        "the password file is a key file (its mode is checked)"
    );
}

#[test]
fn shared_state_problems_are_each_named() {
    let base = "[shared_state]\nbackend = \"redis\"\n";
    for (extra, key) in [
        ("url = \"http://r:6379\"", "shared_state.url"),
        ("url = \"redis://:hunter2@r:6379\"", "shared_state.url"),
        ("url = \"redis://admin@r:6379\"", "shared_state.url"),
        ("", "shared_state.url"),
        (
            "url = \"redis://r\"\nsentinel_urls = [\"redis://s\"]\nsentinel_master = \"m\"",
            "shared_state.url",
        ),
        (
            "sentinel_urls = [\"redis://s\"]",
            "shared_state.sentinel_master",
        ),
        ("sentinel_master = \"m\"", "shared_state.sentinel_urls"),
        (
            "url = \"redis://r\"\nca_file = \"ca.pem\"",
            "shared_state.ca_file",
        ),
        (
            "url = \"redis://r\"\nusername = \"u\"",
            "shared_state.password_file",
        ),
        (
            "url = \"redis://r\"\nkey_prefix = \"a b\"",
            "shared_state.key_prefix",
        ),
        (
            "url = \"redis://r\"\ntimeout_ms = 0",
            "shared_state.timeout_ms",
        ),
        (
            "url = \"redis://r\"\nfallback_replicas = 0",
            "shared_state.fallback_replicas",
        ),
        ("url = \"redis://r\"\nport = 1", "shared_state.port"),
    ] {
        let p = problems(&format!("{base}{extra}"));
        assert!(p.iter().any(|s| s.starts_with(key)), "{extra:?}: {p:?}");
        assert!(
            !p.iter().any(|s| s.contains("hunter2")),
            "the password is not repeated"
        );
    }
    let p = problems("[shared_state]\nbackend = \"memcached\"\nurl = \"redis://r\"");
    assert!(
        p.iter().any(|s| s.starts_with("shared_state.backend")),
        "{p:?}"
    );
}

#[test]
fn the_replica_name_comes_from_the_config_else_the_environment_else_the_host() {
    let c = parse("[audit]\nreplica = \"gw-7\"").unwrap();
    assert_eq!(c.audit.replica, "gw-7");
    // Whatever the host is called, a name is recorded.
    assert!(!parse("").unwrap().audit.replica.is_empty());
    let p = problems("[audit]\nreplica = \"gw 7\\n\"");
    assert!(p.iter().any(|s| s.starts_with("audit.replica")), "{p:?}");
}

/// `namespace = "team-a\n"` passed check-config and was then left out of
/// every call: reads went to the root namespace, whose secret at the same
/// path is another one. A namespace that cannot be sent is refused.
#[test]
fn a_vault_namespace_that_cannot_be_sent_is_refused() {
    let vault = |ns: &str| {
        format!(
            "[secrets]\nbackend = \"vault\"\n[secrets.vault]\naddress = \"https://vault:8200\"\n\
             token_file = \"t\"\nnamespace = {}",
            toml::Value::String(ns.into())
        )
    };
    for bad in [
        "team-a\n",
        "team a",
        "",
        "a//b",
        "/team-a",
        "team-a\u{7f}",
        "é",
    ] {
        let p = problems(&vault(bad));
        assert!(
            p.iter().any(|s| s.starts_with("secrets.vault.namespace")),
            "{bad:?}: {p:?}"
        );
    }
    for good in ["team-a", "team-a/child", "org/team_a.b-c/"] {
        let c = parse(&vault(good)).unwrap_or_else(|e| panic!("{good:?}: {:?}", e.0));
        let SecretsBackend::Vault(v) = c.secrets.backend else {
            panic!("not vault")
        };
        assert_eq!(v.namespace.as_deref(), Some(good));
    }
}

#[test]
fn identities_discovery_members_and_per_issuer_rules_validate() {
    let c = parse(
        r#"
[auth]
team_claim = "/org/teams"
[[auth.issuers]]
discovery_url = "https://idp.test/.well-known/openid-configuration"
jwks_bearer_token_file = "sa/token"
max_token_lifetime_s = 3600
team_claim = "/kubernetes.io/namespace"
typ = ["JWT", "JOSE"]
[[teams]]
[[teams.members]]
issuer = "https://idp.test"
subject = "system:serviceaccount:growth:*"
"#,
    )
    .unwrap();
    let i = &c.auth.issuers[0];
    let j = i.jwks.as_ref().unwrap();
    assert!(
        matches!(&j.source, KeySource::Discovery(u) if u.path() == "/.well-known/openid-configuration")
    );
    assert_eq!(
        j.bearer_token_file.as_deref(),
        Some(Path::new("/etc/bgw/sa/token"))
    );
    assert_eq!(i.max_token_lifetime_s, Some(3600));
    assert_eq!(c.auth.longest_token_lifetime_s(), 3600);
    assert_eq!(
        i.team_claim.as_ref().map(TeamClaim::as_str),
        Some("/kubernetes.io/namespace")
    );
    assert_eq!(c.auth.team_claim.as_str(), "/org/teams");
    assert_eq!(i.typ, ["JWT", "JOSE"]);
    let m = &c.teams[0].members[0];
    assert!(m.matches("https://idp.test", "system:serviceaccount:growth:cleaner"));
    assert!(!m.matches("https://idp.test", "system:serviceaccount:growth-evil:x"));
    assert!(!m.matches("https://other.test", "system:serviceaccount:growth:cleaner"));
    assert!(!m.matches("https://idp.test", "system:serviceaccount:growth:"));

    for (extra, key) in [
        (
            "[[auth.issuers]]\njwks_url = \"https://i/j\"\ndiscovery_url = \"https://i/d\"",
            "auth.issuers[0].discovery_url",
        ),
        (
            "[[auth.issuers]]\ndiscovery_url = \"http://i/d\"",
            "auth.issuers[0].discovery_url",
        ),
        (
            "[[auth.issuers]]\njwks_bearer_token_file = \"t\"",
            "auth.issuers[0].jwks_bearer_token_file",
        ),
        (
            "[[auth.issuers]]\nmax_token_lifetime_s = 0",
            "auth.issuers[0].max_token_lifetime_s",
        ),
        (
            "[auth]\nmax_token_lifetime_s = 0",
            "auth.max_token_lifetime_s",
        ),
        (
            "[[auth.issuers]]\nteam_claim = \"/a~2b\"",
            "auth.issuers[0].team_claim",
        ),
        (
            "[[auth.issuers]]\nteam_claim = \"//x\"",
            "auth.issuers[0].team_claim",
        ),
        ("[auth]\nteam_claim = \"\"", "auth.team_claim"),
        ("[[auth.issuers]]\ntyp = []", "auth.issuers[0].typ"),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://typo.test\"\nsubject = \"a\"",
            "teams[0].members[0].issuer",
        ),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://idp.test\"",
            "teams[0].members[0].subject",
        ),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://idp.test\"\nsubject = \"*\"",
            "teams[0].members[0].subject",
        ),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://idp.test\"\nsubject = \"a*b\"",
            "teams[0].members[0].subject",
        ),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://idp.test\"\nsubject = \"ab**\"",
            "teams[0].members[0].subject",
        ),
        (
            "[[teams]]\n[[teams.members]]\nissuer = \"https://idp.test\"\nsubjet = \"a\"",
            "teams.0.members.0.subjet",
        ),
    ] {
        let p = problems(extra);
        assert!(p.iter().any(|s| s.starts_with(key)), "{key}: {p:?}");
    }
}

#[test]
fn a_team_claim_pointer_reads_nested_claims_and_escapes() {
    let payload = crate::json::parse_object(
        br#"{"kubernetes.io": {"namespace": "growth"}, "a/b": {"m~n": ["x"]}, "team": "t", "groups": ["g1", "g2"]}"#,
    )
    .unwrap();
    let find = |c: &str| TeamClaim::parse(c).unwrap().find(&payload).cloned();
    assert_eq!(find("/kubernetes.io/namespace"), Some("growth".into()));
    assert_eq!(find("/a~1b/m~0n/0"), Some("x".into()));
    assert_eq!(find("team"), Some("t".into()));
    assert_eq!(find("/team"), Some("t".into()));
    assert_eq!(find("/groups/1"), Some("g2".into()));
    assert_eq!(find("/kubernetes.io/pod"), None);
    assert_eq!(
        find("kubernetes.io/namespace"),
        None,
        "not a pointer without the leading /"
    );
}
