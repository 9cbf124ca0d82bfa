//! Raw serde values → typed [`Config`], one function per section, every
//! problem collected (never the first only). Defaults are the named
//! constants of [`super::defaults`].

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults;
use super::issuer::validate_issuer;
use super::raw::*;
use super::types::*;
use super::vault::validate_vault;
use crate::route::Action;

pub(super) fn validate(
    raw: RawConfig,
    base: &Path,
    source: &Path,
    p: &mut Problems,
) -> Option<Config> {
    let resolve = |s: &str| -> PathBuf {
        let path = Path::new(s);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            base.join(path)
        }
    };
    let server = server(raw.server, &resolve, p);
    let upstream = upstream(raw.upstream, &resolve, p);
    let auth = auth(raw.auth, &resolve, p);
    let secrets = secrets(raw.secrets, &resolve, p);
    let log = log(raw.log, p);
    let audit = audit(raw.audit, &resolve, p);
    let shared_state = raw
        .shared_state
        .map(|s| super::shared::validate_shared_state(s, &resolve, p));
    let (projects, aliases) = projects(raw.projects, p);
    let issuers: BTreeSet<&str> = auth
        .iter()
        .flat_map(|a| a.issuers.iter().map(|i| i.issuer.as_str()))
        .collect();
    let teams = teams(raw.teams, &aliases, &issuers, p);
    Some(Config {
        source: source.to_path_buf(),
        server,
        upstream,
        auth: auth?,
        secrets: secrets?,
        log,
        audit: audit?,
        shared_state: match shared_state {
            Some(s) => Some(s?),
            None => None,
        },
        projects,
        teams,
    })
}

/// `[server]`.
fn server(s: RawServer, resolve: &dyn Fn(&str) -> PathBuf, p: &mut Problems) -> ServerConfig {
    let addr = |key: &str, v: Option<String>, default: &str, p: &mut Problems| {
        let text = v.unwrap_or_else(|| default.to_string());
        text.parse::<SocketAddr>().unwrap_or_else(|_| {
            p.add(
                format!("server.{key}"),
                format!("{text:?} is not an IP:port address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let listen = addr("listen", s.listen, defaults::LISTEN, p);
    let admin_listen = addr("admin_listen", s.admin_listen, defaults::ADMIN_LISTEN, p);
    if listen == admin_listen && listen.port() != 0 {
        p.add(
            "server.admin_listen",
            "must differ from server.listen (the admin plane is never on the data port)",
        );
    }
    let positive = |key: &str, v: Option<u64>, default: u64, p: &mut Problems| -> u64 {
        let v = v.unwrap_or(default);
        if v == 0 {
            p.add(format!("server.{key}"), "must be greater than 0");
        }
        v
    };
    let max_body_bytes = positive(
        "max_body_bytes",
        s.max_body_bytes,
        defaults::MAX_BODY_BYTES,
        p,
    );
    let max_header_bytes = s.max_header_bytes.unwrap_or(defaults::MAX_HEADER_BYTES);
    if max_header_bytes < defaults::MIN_HEADER_BYTES {
        p.add("server.max_header_bytes", "must be at least 8192");
    }
    let max_concurrent_requests = positive(
        "max_concurrent_requests",
        s.max_concurrent_requests,
        defaults::MAX_CONCURRENT_REQUESTS,
        p,
    );
    let max_connections = positive(
        "max_connections",
        s.max_connections,
        defaults::MAX_CONNECTIONS,
        p,
    );
    let max_headers = positive("max_headers", s.max_headers, defaults::MAX_HEADERS, p);
    positive(
        "header_read_timeout_ms",
        s.header_read_timeout_ms,
        defaults::HEADER_READ_TIMEOUT_MS,
        p,
    );
    positive(
        "body_read_timeout_ms",
        s.body_read_timeout_ms,
        defaults::BODY_READ_TIMEOUT_MS,
        p,
    );
    positive(
        "h2_idle_timeout_ms",
        s.h2_idle_timeout_ms,
        defaults::H2_IDLE_TIMEOUT_MS,
        p,
    );
    let h2_max_reset_streams = positive(
        "h2_max_reset_streams",
        s.h2_max_reset_streams,
        defaults::H2_MAX_RESET_STREAMS,
        p,
    );
    if h2_max_reset_streams > 100_000 {
        p.add("server.h2_max_reset_streams", "must be at most 100000");
    }
    let tls = s.tls.map(|t| {
        if t.cert_file.is_none() {
            p.add("server.tls.cert_file", "required with [server.tls]");
        }
        if t.key_file.is_none() {
            p.add("server.tls.key_file", "required with [server.tls]");
        }
        TlsConfig {
            cert_file: resolve(t.cert_file.as_deref().unwrap_or_default()),
            key_file: resolve(t.key_file.as_deref().unwrap_or_default()),
            client_ca_file: t.client_ca_file.as_deref().map(resolve),
        }
    });
    ServerConfig {
        listen,
        admin_listen,
        max_body_bytes: max_body_bytes as usize,
        max_header_bytes: max_header_bytes as usize,
        header_read_timeout: ms(s.header_read_timeout_ms, defaults::HEADER_READ_TIMEOUT_MS),
        body_read_timeout: ms(s.body_read_timeout_ms, defaults::BODY_READ_TIMEOUT_MS),
        shutdown_grace: ms(s.shutdown_grace_ms, defaults::SHUTDOWN_GRACE_MS),
        max_concurrent_requests: max_concurrent_requests as usize,
        max_connections: max_connections as usize,
        max_headers: max_headers as usize,
        h2_idle_timeout: ms(s.h2_idle_timeout_ms, defaults::H2_IDLE_TIMEOUT_MS),
        h2_max_reset_streams: h2_max_reset_streams as usize,
        tls,
    }
}

/// `[upstream]`.
fn upstream(u: RawUpstream, resolve: &dyn Fn(&str) -> PathBuf, p: &mut Problems) -> UpstreamConfig {
    let base_text = u.base_url.unwrap_or_else(|| defaults::BASE_URL.to_string());
    let base_url = match base_text.parse::<http::Uri>() {
        Ok(uri)
            if uri.scheme_str() == Some("https")
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            uri
        }
        _ => {
            p.add(
                "upstream.base_url",
                format!("{base_text:?} must be an https:// URL with a host and no query"),
            );
            http::Uri::from_static("https://invalid.invalid")
        }
    };
    let connect_timeout = ms(u.connect_timeout_ms, defaults::CONNECT_TIMEOUT_MS);
    let request_timeout = ms(u.request_timeout_ms, defaults::REQUEST_TIMEOUT_MS);
    if request_timeout.is_zero() {
        p.add("upstream.request_timeout_ms", "must be greater than 0");
    }
    if connect_timeout.is_zero() {
        p.add("upstream.connect_timeout_ms", "must be greater than 0");
    }
    UpstreamConfig {
        base_url,
        dry_run: u.dry_run.unwrap_or(false),
        ca_file: u.ca_file.as_deref().map(resolve),
        connect_timeout,
        request_timeout,
    }
}

/// `[auth]` and its `[[auth.issuers]]`.
fn auth(
    raw: Option<RawAuth>,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<AuthConfig> {
    match raw {
        None => {
            p.add(
                "auth",
                "missing: at least auth.audiences and one [[auth.issuers]]",
            );
            None
        }
        Some(a) => {
            let replay_cache_size = a.replay_cache_size.unwrap_or(defaults::REPLAY_CACHE_SIZE);
            if replay_cache_size == 0 {
                p.add("auth.replay_cache_size", "must be greater than 0");
            }
            let audiences = a.audiences.unwrap_or_default();
            if audiences.is_empty() || audiences.iter().any(String::is_empty) {
                p.add(
                    "auth.audiences",
                    "must list at least one non-empty audience",
                );
            }
            if a.issuers.is_empty() {
                p.add("auth.issuers", "at least one [[auth.issuers]] is required");
            }
            let team_claim = match a.team_claim {
                None => TeamClaim::default(),
                Some(t) => TeamClaim::parse(&t).unwrap_or_else(|why| {
                    p.add("auth.team_claim", format!("{t:?} {why}"));
                    TeamClaim::default()
                }),
            };
            let max_token_lifetime_s = a
                .max_token_lifetime_s
                .unwrap_or(defaults::MAX_TOKEN_LIFETIME_S);
            super::issuer::check_lifetime("auth.max_token_lifetime_s", max_token_lifetime_s, p);
            let mut seen = BTreeSet::new();
            let issuers = a
                .issuers
                .into_iter()
                .enumerate()
                .map(|(i, iss)| validate_issuer(i, iss, resolve, &mut seen, p))
                .collect();
            Some(AuthConfig {
                audiences,
                leeway_s: a.leeway_s.unwrap_or(defaults::LEEWAY_S),
                max_token_lifetime_s,
                team_claim,
                replay_cache_size,
                issuers,
            })
        }
    }
}

/// `[secrets]` (and `[secrets.vault]`).
fn secrets(
    raw: Option<RawSecrets>,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<SecretsConfig> {
    match raw {
        None => {
            p.add("secrets", "missing: backend and file");
            None
        }
        Some(sec) => {
            let backend_name = sec.backend.as_deref().unwrap_or("file");
            if backend_name != "vault" && sec.vault.is_some() {
                p.add("secrets.vault", "only meaningful with backend = \"vault\"");
            }
            let backend = match backend_name {
                "file" => match sec.file {
                    Some(f) => Some(SecretsBackend::File(resolve(&f))),
                    None => {
                        p.add("secrets.file", "required when backend = \"file\"");
                        None
                    }
                },
                "vault" => match sec.vault {
                    None => {
                        p.add("secrets.vault", "required when backend = \"vault\"");
                        None
                    }
                    Some(v) => {
                        validate_vault(v, resolve, p).map(|v| SecretsBackend::Vault(Box::new(v)))
                    }
                },
                other => {
                    p.add(
                        "secrets.backend",
                        format!("{other:?} is not a backend (\"file\" or \"vault\")"),
                    );
                    None
                }
            };
            backend.map(|backend| SecretsConfig {
                backend,
                cache_ttl: Duration::from_secs(sec.cache_ttl_s.unwrap_or(defaults::CACHE_TTL_S)),
                stale_if_error: Duration::from_secs(
                    sec.stale_if_error_s.unwrap_or(defaults::STALE_IF_ERROR_S),
                ),
            })
        }
    }
}

/// `[log]`.
fn log(raw: RawLog, p: &mut Problems) -> LogConfig {
    let format = match raw.format.as_deref() {
        None | Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            p.add(
                "log.format",
                format!("{other:?} is not \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = raw.level.unwrap_or_else(|| defaults::LOG_LEVEL.to_string());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.add(
            "log.level",
            format!("{level:?} is not a log level or filter"),
        );
    }
    LogConfig { level, format }
}

/// `[audit]`.
fn audit(
    raw: Option<RawAudit>,
    resolve: &dyn Fn(&str) -> PathBuf,
    p: &mut Problems,
) -> Option<AuditConfig> {
    match raw {
        None => {
            p.add("audit", "missing: file and hmac_key_file");
            None
        }
        Some(a) => {
            let rotate_bytes = a.rotate_bytes.unwrap_or(defaults::ROTATE_BYTES);
            if rotate_bytes < 4096 {
                p.add("audit.rotate_bytes", "must be at least 4096");
            }
            let checkpoint_interval_s = a
                .checkpoint_interval_s
                .unwrap_or(defaults::CHECKPOINT_INTERVAL_S);
            if checkpoint_interval_s == 0 {
                p.add("audit.checkpoint_interval_s", "must be greater than 0");
            }
            if a.keep_files.is_some() {
                p.add(
                    "audit.keep_files",
                    "no longer supported: files are not removed by count any more; use \
                     retention_days (rotated files older than this are removed, with a prune \
                     record) and max_total_bytes (a size budget that refuses requests, never \
                     deletes)",
                );
            }
            let retention_days = a.retention_days.unwrap_or(0);
            if retention_days > 36_500 {
                p.add(
                    "audit.retention_days",
                    "must be at most 36500 (0 = never remove)",
                );
            }
            let max_total_bytes = a.max_total_bytes.unwrap_or(0);
            if max_total_bytes != 0 && max_total_bytes < rotate_bytes.saturating_mul(2) {
                p.add(
                    "audit.max_total_bytes",
                    "must be 0 (no budget) or at least twice rotate_bytes",
                );
            }
            let replica = super::shared::replica(a.replica, p);
            if a.file.is_none() {
                p.add("audit.file", "required");
            }
            if a.hmac_key_file.is_none() {
                p.add("audit.hmac_key_file", "required");
            }
            match (a.file, a.hmac_key_file) {
                (Some(f), Some(k)) => Some(AuditConfig {
                    file: resolve(&f),
                    hmac_key_file: resolve(&k),
                    rotate_bytes,
                    retention_days,
                    max_total_bytes,
                    unauthenticated_records_per_s: a
                        .unauthenticated_records_per_s
                        .unwrap_or(defaults::UNAUTHENTICATED_RECORDS_PER_S),
                    signing_key_file: a.signing_key_file.as_deref().map(resolve),
                    checkpoint_interval: Duration::from_secs(checkpoint_interval_s),
                    stdout: a.stdout.unwrap_or(false),
                    replica,
                }),
                _ => None,
            }
        }
    }
}

/// `[[projects]]`, and where each alias is defined.
fn projects(
    raw: Vec<RawProject>,
    p: &mut Problems,
) -> (Vec<ProjectConfig>, HashMap<String, usize>) {
    let mut aliases: HashMap<String, usize> = HashMap::new();
    let mut projects = Vec::new();
    for (i, pr) in raw.into_iter().enumerate() {
        let alias = pr.alias.unwrap_or_default();
        if !valid_alias(&alias) {
            p.add(
                format!("projects[{i}].alias"),
                format!("{alias:?} must be 1-64 characters of a-z, A-Z, 0-9, '.', '_' or '-'"),
            );
        } else if aliases.insert(alias.clone(), i).is_some() {
            p.add(
                format!("projects[{i}].alias"),
                format!("{alias:?} is defined twice"),
            );
        }
        let secret_path = pr.secret_path.unwrap_or_default();
        if secret_path.is_empty() {
            p.add(format!("projects[{i}].secret_path"), "required");
        }
        let upstream_rate_per_s = match pr.upstream_rate_per_s {
            Some(0) => {
                p.add(
                    format!("projects[{i}].upstream_rate_per_s"),
                    "must be greater than 0",
                );
                None
            }
            Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
            None => None,
        };
        projects.push(ProjectConfig {
            alias,
            secret_path,
            upstream_rate_per_s,
        });
    }
    (projects, aliases)
}

/// `[[teams]]` and their grants, naming known project aliases only.
fn teams(
    raw: Vec<RawTeam>,
    aliases: &HashMap<String, usize>,
    issuers: &BTreeSet<&str>,
    p: &mut Problems,
) -> Vec<TeamConfig> {
    let mut team_names = BTreeSet::new();
    let mut teams = Vec::new();
    for (i, t) in raw.into_iter().enumerate() {
        let name = t.name.unwrap_or_default();
        if name.is_empty() {
            p.add(format!("teams[{i}].name"), "required");
        } else if !team_names.insert(name.clone()) {
            p.add(
                format!("teams[{i}].name"),
                format!("{name:?} is defined twice"),
            );
        }
        let members = t
            .members
            .into_iter()
            .enumerate()
            .filter_map(|(j, m)| member(&format!("teams[{i}].members[{j}]"), m, issuers, p))
            .collect();
        let mut grants = Vec::new();
        for (j, g) in t.grants.into_iter().enumerate() {
            let key = format!("teams[{i}].grants[{j}]");
            let rate_per_minute = match g.rate_per_minute {
                Some(0) => {
                    p.add(format!("{key}.rate_per_minute"), "must be greater than 0");
                    None
                }
                Some(n) => Some(u32::try_from(n).unwrap_or(u32::MAX)),
                None => None,
            };
            if g.daily_quota == Some(0) {
                p.add(format!("{key}.daily_quota"), "must be greater than 0");
            }
            let project = g.project.unwrap_or_default();
            if !aliases.contains_key(&project) {
                p.add(
                    format!("{key}.project"),
                    format!("{project:?} is not a [[projects]] alias"),
                );
            }
            let mut actions = Vec::new();
            let raw_actions = g.actions.unwrap_or_default();
            if raw_actions.is_empty() {
                p.add(format!("{key}.actions"), "must list at least one action");
            }
            for a in raw_actions {
                match Action::from_name(&a) {
                    Some(act) => actions.push(act),
                    None => p.add(
                        format!("{key}.actions"),
                        format!(
                            "{a:?} is not an action (known: {})",
                            Action::names().join(", ")
                        ),
                    ),
                }
            }
            grants.push(GrantConfig {
                project,
                actions,
                dry_run: g.dry_run.unwrap_or(false),
                require_bound_token: g.require_bound_token.unwrap_or(false),
                single_use_tokens: g.single_use_tokens.unwrap_or(false),
                rate_per_minute,
                daily_quota: g.daily_quota,
            });
        }
        teams.push(TeamConfig {
            name,
            members,
            grants,
        });
    }
    teams
}

/// One `[[teams.members]]`: a configured issuer and a subject that is
/// exact or a prefix ending in `*` (never `*` alone: that would be every
/// caller of the issuer, which a team claim says better).
fn member(
    key: &str,
    m: RawMember,
    issuers: &BTreeSet<&str>,
    p: &mut Problems,
) -> Option<MemberConfig> {
    let issuer = m.issuer.unwrap_or_default();
    let subject = m.subject.unwrap_or_default();
    let before = p.0.len();
    if issuer.is_empty() {
        p.add(format!("{key}.issuer"), "required");
    } else if !issuers.contains(issuer.as_str()) {
        p.add(
            format!("{key}.issuer"),
            format!("{issuer:?} is not one of the [[auth.issuers]]"),
        );
    }
    if subject.is_empty() {
        p.add(format!("{key}.subject"), "required");
    } else if subject == "*" {
        p.add(
            format!("{key}.subject"),
            "\"*\" alone would admit every subject of the issuer; give a prefix (\"spiffe://example.org/ns/growth/*\")",
        );
    } else if subject.trim_end_matches('*').contains('*') || subject.ends_with("**") {
        p.add(
            format!("{key}.subject"),
            format!("{subject:?}: `*` may only end the subject (a prefix), once"),
        );
    } else if subject.len() > 512 {
        p.add(format!("{key}.subject"), "longer than 512 bytes");
    }
    (p.0.len() == before).then_some(MemberConfig { issuer, subject })
}

fn ms(v: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(v.unwrap_or(default))
}

/// Aliases travel in a header and in audit records: keep them plain.
fn valid_alias(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
