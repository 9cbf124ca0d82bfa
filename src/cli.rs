//! The command line: `serve`, `check-config`, `audit verify|query`,
//! `token mint`. Exit codes: 0 ok, 1 a check failed, 2 bad usage or a
//! config `serve` refuses.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::audit::verify;
use crate::config::{Config, LogFormat};

#[derive(Parser)]
#[command(
    name = "batch-gateway",
    version,
    about = "A JWT-authenticated, audited gateway to Batch's Campaign API: callers never hold Batch's REST key."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (data plane and admin plane) until SIGTERM or SIGINT.
    Serve(ServeArgs),
    /// Validate a config and open every file it references; exit 0, or print every problem and exit 1.
    CheckConfig(CheckArgs),
    /// Review the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Developer helpers for caller tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Ask the policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the decision for a team (or a token), project and action, the
    /// grant that decided it and the limits that apply. Exit 0 on allow,
    /// 1 on deny.
    Explain(ExplainArgs),
}

#[derive(Args)]
struct ExplainArgs {
    /// The gateway's config.
    #[arg(long, env = "BATCH_GATEWAY_CONFIG")]
    config: PathBuf,
    /// The caller's team (repeat for a caller in several teams).
    #[arg(long, required_unless_present_any = ["token", "subject"], conflicts_with = "token")]
    team: Vec<String>,
    /// A caller token: verified as the gateway would, its teams used.
    #[arg(long)]
    token: Option<String>,
    /// A verified issuer, with --subject: the teams whose [[teams.members]] match.
    #[arg(long, requires = "subject", conflicts_with = "token")]
    issuer: Option<String>,
    /// A verified subject (`sub`), with --issuer.
    #[arg(long, requires = "issuer", conflicts_with = "token")]
    subject: Option<String>,
    /// The project alias, as in X-Batch-Project (omit as a caller would).
    #[arg(long)]
    project: Option<String>,
    /// The action.
    #[arg(long, default_value = "campaigns.delete")]
    action: String,
}

#[derive(Args)]
struct ServeArgs {
    /// The gateway's TOML config.
    #[arg(long, env = "BATCH_GATEWAY_CONFIG", required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Try-it-now mode on loopback: generates a dev key pair, file secrets and
    /// an HMAC key in --dev-dir, runs in dry-run (nothing is sent to Batch),
    /// and prints a ready curl line.
    #[arg(long, conflicts_with = "config")]
    dev: bool,
    /// Where --dev writes its generated files (recreated on each start).
    #[arg(long, default_value = "batch-gateway-dev", requires = "dev")]
    dev_dir: PathBuf,
    /// With --dev: the data-plane address.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "dev")]
    listen: std::net::SocketAddr,
    /// With --dev: the admin address.
    #[arg(long, default_value = "127.0.0.1:9090", requires = "dev")]
    admin_listen: std::net::SocketAddr,
}

#[derive(Args)]
struct CheckArgs {
    /// The config to check.
    #[arg(long, env = "BATCH_GATEWAY_CONFIG")]
    config: PathBuf,
    /// Check everything but the files the config references (for examples
    /// whose files live elsewhere).
    #[arg(long)]
    skip_files: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain and seq across files or a folder of rotated files;
    /// exit 0 with the record count, or 1 naming the first bad record.
    Verify(VerifyArgs),
    /// Print the records that match every filter given.
    Query(QueryArgs),
    /// A reviewer's summary: counts by team, project, action and decision,
    /// top denial reasons, most-denied callers, stale secret uses, chain
    /// gaps and repairs.
    Report(ReportArgs),
}

#[derive(Args)]
struct ReportArgs {
    /// Audit files, or folders holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Records at or after this time (RFC 3339); default: 7 days before
    /// --until, else before the trail's newest record.
    #[arg(long, value_parser = parse_time)]
    since: Option<time::OffsetDateTime>,
    /// Records at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<time::OffsetDateTime>,
    /// text (the terminal summary), json (one document) or html (one
    /// self-contained page with charts).
    #[arg(long, value_parser = ["text", "json", "html"], default_value = "text")]
    format: String,
    /// Write the report to this file instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Ed25519 public key (PEM): the report says whether every checkpoint's
    /// signature verifies.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// Deletions outside these hours (UTC) are unusual: `08:00-19:00`, or
    /// with days, `"Mon-Fri 08:00-19:00"`.
    #[arg(long)]
    working_hours: Option<crate::audit::anomalies::WorkingHours>,
}

#[derive(Args)]
struct VerifyArgs {
    /// Audit files, or folders holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Accept a chain that does not start at seq 1 even when no prune
    /// record accounts for the missing start (older files removed by hand).
    #[arg(long)]
    allow_pruned_start: bool,
    /// Ed25519 public key (PEM): every checkpoint's signature must verify,
    /// and at least one checkpoint must exist.
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// The head of the last checkpoint you saw: it must still be in the
    /// chain (so a removed tail or final file is caught).
    #[arg(long)]
    expect_head: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Table,
}

#[derive(Args)]
struct QueryArgs {
    /// Audit files, or folders holding them.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// The caller's team.
    #[arg(long)]
    team: Option<String>,
    /// The caller's subject (`sub`).
    #[arg(long)]
    sub: Option<String>,
    /// The project alias.
    #[arg(long)]
    project: Option<String>,
    /// The campaign id.
    #[arg(long)]
    campaign: Option<String>,
    /// allow or deny.
    #[arg(long, value_parser = ["allow", "deny"])]
    decision: Option<String>,
    /// The reason (an X-Gateway-Error value, or ok).
    #[arg(long)]
    reason: Option<String>,
    /// The gateway's request id.
    #[arg(long)]
    request_id: Option<String>,
    /// Records at or after this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    since: Option<time::OffsetDateTime>,
    /// Records at or before this time (RFC 3339).
    #[arg(long, value_parser = parse_time)]
    until: Option<time::OffsetDateTime>,
    /// json (one record per line, as stored) or table.
    #[arg(long, value_enum, default_value = "json")]
    format: Format,
}

fn parse_time(s: &str) -> Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time: {e}"))
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Sign a caller JWT with a private key (for trying the gateway out).
    Mint(crate::dev::MintArgs),
}

/// Writes a line to stdout; a closed pipe (`| head`) is not an error.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Runs the command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(a) => serve(a),
        Command::CheckConfig(a) => check_config(&a),
        Command::Audit(AuditCommand::Verify(a)) => audit_verify(&a),
        Command::Audit(AuditCommand::Query(a)) => audit_query(a),
        Command::Audit(AuditCommand::Report(a)) => audit_report(a),
        Command::Policy(PolicyCommand::Explain(a)) => policy_explain(&a),
        Command::Token(TokenCommand::Mint(a)) => match crate::dev::mint_many(&a, a.count) {
            Ok(tokens) => {
                for tok in tokens {
                    say!("{tok}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("token mint: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn print_problems(config: &std::path::Path, problems: &[crate::config::Problem]) {
    eprintln!("{}: {} problem(s)", config.display(), problems.len());
    for p in problems {
        eprintln!("  {p}");
    }
}

fn check_config(a: &CheckArgs) -> ExitCode {
    let cfg = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            print_problems(&a.config, &e.0);
            return ExitCode::from(1);
        }
    };
    if !a.skip_files {
        for w in cfg.key_file_modes().1 {
            eprintln!("warning: {w}");
        }
        let problems = crate::preflight::check_files(&cfg);
        if !problems.is_empty() {
            print_problems(&a.config, &problems);
            return ExitCode::from(1);
        }
    }
    say!("{}: ok", a.config.display());
    ExitCode::SUCCESS
}

fn audit_verify(a: &VerifyArgs) -> ExitCode {
    let public_key = match &a.public_key {
        None => None,
        Some(p) => match verify::load_checkpoint_key(p) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("audit verify: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let opts = verify::VerifyOptions {
        allow_pruned_start: a.allow_pruned_start,
        public_key,
        expect_head: a.expect_head.clone(),
    };
    let chains = match crate::audit::chains::collect_chains(&a.paths) {
        Ok(c) => c,
        Err(b) => {
            say!("FAILED: {b}");
            return ExitCode::from(1);
        }
    };
    if chains.len() > 1 && opts.expect_head.is_some() {
        eprintln!(
            "audit verify: --expect-head names one chain's head; give one replica's folder at a time"
        );
        return ExitCode::from(2);
    }
    // Each chain on its own, each reported on its own line(s).
    let mut failed = false;
    for chain in &chains {
        let label = chain
            .name
            .as_deref()
            .map(|n| format!("{}: ", crate::common::escape_controls(n)))
            .unwrap_or_default();
        failed |= !verify_one(&label, &chain.files, &opts);
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// Verifies one chain and says so, every line after the first indented
/// under the chain's `label` (empty for a single chain). False when
/// broken.
fn verify_one(label: &str, files: &[std::path::PathBuf], opts: &verify::VerifyOptions) -> bool {
    let result = verify::verify(files, opts);
    match result {
        Ok(v) => {
            let range = match (v.first_seq, v.last_seq) {
                (Some(f), Some(l)) => format!(", seq {f}..{l}"),
                _ => String::new(),
            };
            say!(
                "ok: {label}{} records in {} file(s){range}; head {}",
                v.records,
                v.files,
                v.head
            );
            if v.pruned_start && v.pruned_by_retention {
                say!(
                    "note: the chain starts at seq {}: older records were removed by retention, as a prune record in the chain accounts for",
                    v.first_seq.unwrap_or(0)
                );
            } else if v.pruned_start {
                say!(
                    "note: the chain starts at seq {} (older records were removed; accepted by --allow-pruned-start, no prune record accounts for them)",
                    v.first_seq.unwrap_or(0)
                );
            }
            if v.checkpoints > 0 {
                let signed = if opts.public_key.is_some() {
                    "signed "
                } else {
                    ""
                };
                say!(
                    "{} {signed}checkpoint(s); last checkpoint head {}; {} record(s) after it",
                    v.checkpoints,
                    v.last_checkpoint_head.as_deref().unwrap_or("-"),
                    v.after_last_checkpoint
                );
                let current = v.checkpoints - v.legacy_checkpoints;
                if current > 0 {
                    say!("{current} checkpoint(s) signed over their seq, ts and head");
                }
                if v.legacy_checkpoints > 0 {
                    say!(
                        "{} checkpoint(s) in the older scheme, signed over their head only (written before seq and ts were signed)",
                        v.legacy_checkpoints
                    );
                }
            }
            if v.summaries > 0 {
                say!(
                    "{} summary record(s) of unauthenticated denials past the per-second budget",
                    v.summaries
                );
            }
            for (seq, reason) in &v.repairs {
                say!(
                    "repair at seq {seq}: {}",
                    crate::common::escape_controls(reason)
                );
            }
            true
        }
        Err(b) => {
            say!("FAILED: {label}{b}");
            false
        }
    }
}

fn audit_report(a: ReportArgs) -> ExitCode {
    let filter = verify::Filter {
        since: a.since,
        until: a.until,
        ..verify::Filter::default()
    };
    let key = match &a.public_key {
        None => None,
        Some(p) => match verify::load_checkpoint_key(p) {
            Ok(k) => Some(k),
            Err(e) => {
                eprintln!("audit report: --public-key: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let chains = crate::audit::chains::collect_chains(&a.paths);
    let opts = crate::audit::report::Options {
        public_key: key,
        working_hours: a.working_hours,
    };
    // Without --since: the last 7 days of the trail (or before --until).
    let mut filter = filter;
    if filter.since.is_none()
        && let Ok(c) = &chains
        && let Some(end) = filter.until.or_else(|| crate::audit::chains::newest_ts(c))
    {
        filter.since = Some(end - time::Duration::days(7));
    }
    match chains.and_then(|c| crate::audit::report::build(&c, &filter, &opts)) {
        Ok(r) => {
            use std::io::Write as _;
            let out: Box<dyn std::io::Write> = match &a.output {
                Some(path) => match std::fs::File::create(path) {
                    Ok(f) => Box::new(f),
                    Err(e) => {
                        eprintln!("audit report: cannot write {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                },
                None => Box::new(std::io::stdout().lock()),
            };
            // Written as it is made: the report's list of deletions may
            // be long, and is never one string.
            let mut out = std::io::BufWriter::new(out);
            let written = match a.format.as_str() {
                "json" => serde_json::to_writer_pretty(&mut out, &r)
                    .map_err(std::io::Error::other)
                    .and_then(|()| out.write_all(b"\n")),
                "html" => {
                    let mut w = crate::audit::html::IoFmt {
                        inner: &mut out,
                        error: None,
                    };
                    crate::audit::html::write_page(&r, &mut w);
                    w.error.map_or(Ok(()), Err)
                }
                _ => out.write_all(r.text().as_bytes()),
            };
            if let Err(e) = written.and_then(|()| out.flush()) {
                eprintln!("audit report: cannot write the report: {e}");
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("audit report: {e}");
            ExitCode::from(2)
        }
    }
}

fn audit_query(a: QueryArgs) -> ExitCode {
    let filter = verify::Filter {
        team: a.team,
        sub: a.sub,
        project: a.project,
        campaign: a.campaign,
        decision: a.decision,
        reason: a.reason,
        request_id: a.request_id,
        since: a.since,
        until: a.until,
    };
    let chains = match crate::audit::chains::collect_chains(&a.paths) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("audit query: {e}");
            return ExitCode::from(2);
        }
    };
    match a.format {
        // Streamed: a query over the whole trail holds one record per chain.
        Format::Json => {
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut open = true;
            let done = crate::audit::chains::for_each_record(&chains, &filter, |raw, _| {
                open = open && writeln!(out, "{raw}").is_ok();
            });
            let _ = out.flush();
            if let Err(e) = done {
                eprintln!("audit query: {e}");
                return ExitCode::from(2);
            }
        }
        Format::Table => {
            let rows = match crate::audit::chains::query(&chains, &filter) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("audit query: {e}");
                    return ExitCode::from(2);
                }
            };
            use std::io::Write as _;
            let _ = write!(std::io::stdout().lock(), "{}", verify::table(&rows));
        }
    }
    ExitCode::SUCCESS
}

fn policy_explain(a: &ExplainArgs) -> ExitCode {
    use crate::policy::{authorize, matching_grants};
    use crate::route::Action;
    let cfg = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            print_problems(&a.config, &e.0);
            return ExitCode::from(2);
        }
    };
    let Some(action) = Action::from_name(&a.action) else {
        eprintln!(
            "policy explain: {:?} is not an action (known: {})",
            a.action,
            Action::names().join(", ")
        );
        return ExitCode::from(2);
    };
    let principal = match &a.token {
        Some(token) => {
            let verified = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        let authn = crate::authn::Authenticator::new(&cfg.auth, &cfg.teams)
                            .map_err(|e| e.to_string())?;
                        authn.start().await;
                        authn
                            .verify(token.trim(), crate::common::now_s())
                            .await
                            .map_err(|e| format!("token rejected: {}", e.detail))
                    })
                });
            match verified {
                Ok(p) => p,
                Err(e) => {
                    say!("decision: deny\n{e}");
                    return ExitCode::from(1);
                }
            }
        }
        None => std::sync::Arc::new({
            use crate::authn::{Membership, Via};
            let mut memberships: Vec<Membership> = a
                .team
                .iter()
                .map(|t| Membership {
                    team: t.clone(),
                    via: Via::Given,
                })
                .collect();
            if let (Some(iss), Some(sub)) = (&a.issuer, &a.subject) {
                memberships.extend(crate::authn::teams_by_subject(&cfg.teams, iss, sub));
            }
            let mut teams: Vec<String> = Vec::new();
            for m in &memberships {
                if !teams.contains(&m.team) {
                    teams.push(m.team.clone());
                }
            }
            crate::authn::Principal {
                iss: a.issuer.clone().unwrap_or_else(|| "-".into()),
                sub: a.subject.clone().unwrap_or_else(|| "-".into()),
                teams,
                memberships,
                jti: None,
                exp: 0,
                binding: Default::default(),
                recorded: crate::common::Memo::new(),
            }
        }),
    };
    let headers: Vec<&str> = a.project.iter().map(String::as_str).collect();
    if principal.teams.is_empty() {
        say!("teams: none (no team claim, and no [[teams.members]] entry matches)");
    } else {
        say!("teams: {}", principal.teams.join(", "));
    }
    for m in &principal.memberships {
        use crate::authn::Via;
        match &m.via {
            Via::Given => say!("team {}: given with --team", m.team),
            Via::Claim(claim) => say!("team {}: named by the token's team claim {claim}", m.team),
            Via::Member { team, member } => {
                let entry = cfg.teams.get(*team).and_then(|t| t.members.get(*member));
                say!(
                    "team {}: teams[{team}].members[{member}] (issuer {}, subject {}) matches sub {}",
                    m.team,
                    entry.map_or("?", |e| e.issuer.as_str()),
                    entry.map_or("?", |e| e.subject.as_str()),
                    principal.sub
                );
            }
        }
    }
    // Explain decides on the grants alone: no request target is routed.
    match authorize(&cfg, &principal, &headers, action, "") {
        Err(f) => {
            say!("decision: deny (forbidden: {f})");
            ExitCode::from(1)
        }
        Ok(permit) => {
            say!("decision: allow");
            say!(
                "project: {} (secret path {})",
                permit.project(),
                permit.secret_path()
            );
            say!("action: {}", action.name());
            for m in matching_grants(&cfg, &principal.teams, permit.project(), action) {
                let g = m.config;
                let limit = |v: Option<String>| v.unwrap_or_else(|| "none".into());
                say!(
                    "granted by teams[{}].grants[{}] (team {}): rate_per_minute {}, daily_quota {}, dry_run {}, require_bound_token {}, single_use_tokens {}",
                    m.team,
                    m.grant,
                    m.team_name,
                    limit(g.rate_per_minute.map(|v| v.to_string())),
                    limit(g.daily_quota.map(|v| v.to_string())),
                    g.dry_run,
                    g.require_bound_token,
                    g.single_use_tokens
                );
            }
            let pace = permit
                .upstream_rate_per_s()
                .map_or_else(|| "none".to_string(), |v| format!("{v}/s"));
            say!(
                "applies: dry_run {}, require_bound_token {}, single_use_tokens {}, upstream pace {pace}",
                permit.dry_run() || cfg.upstream.dry_run,
                permit.require_bound_token(),
                permit.single_use_tokens()
            );
            ExitCode::SUCCESS
        }
    }
}

fn init_tracing(level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn serve(a: ServeArgs) -> ExitCode {
    let (config, dev) = if a.dev {
        match crate::dev::prepare(&a.dev_dir, a.listen, a.admin_listen) {
            Ok((cfg, setup)) => (cfg, Some(setup)),
            Err(e) => {
                eprintln!("serve --dev: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        let Some(path) = a.config else {
            eprintln!("serve: give --config FILE or set BATCH_GATEWAY_CONFIG (or try --dev)");
            return ExitCode::from(2);
        };
        match Config::load(&path) {
            Ok(c) => (c, None),
            Err(e) => {
                print_problems(&path, &e.0);
                eprintln!("serve: refusing to start on an invalid config");
                return ExitCode::from(2);
            }
        }
    };
    init_tracing(&config.log.level, config.log.format);
    let (refused, warned) = config.key_file_modes();
    for w in &warned {
        tracing::warn!(key = %w.key, "{}", w.message);
    }
    if !refused.is_empty() {
        for p in &refused {
            eprintln!("serve: {p}");
        }
        eprintln!("serve: refusing to start with a key file anyone may read");
        return ExitCode::from(2);
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let rt = match serve_runtime(cpus) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serve: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        let app = match crate::app::App::build(config).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("serve: {e}");
                return ExitCode::from(2);
            }
        };
        let listeners = match crate::listen::Listeners::bind(&app).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("serve: cannot bind: {e} (address in use?)");
                return ExitCode::from(2);
            }
        };
        tracing::info!(
            listen = %listeners.data_addr().map(|a| a.to_string()).unwrap_or_default(),
            admin = %listeners.admin_addr().map(|a| a.to_string()).unwrap_or_default(),
            cpus,
            runtime = runtime_name(&tokio::runtime::Handle::current()),
            "batch-gateway serving"
        );
        if let Some(setup) = dev {
            match listeners.data_addr() {
                Ok(addr) => setup.print_instructions(addr),
                Err(e) => eprintln!("serve --dev: {e}"),
            }
        }
        tokio::spawn(watch_config(app.clone()));
        crate::listen::serve(app, listeners, shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Reloads the config on SIGHUP and when the file changes (checked every
/// 2 s by modification time and size).
async fn watch_config(app: std::sync::Arc<crate::app::App>) {
    use tokio::signal::unix::{SignalKind, signal};
    let source = app.state().config.source.clone();
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut seen = stamp(&source);
    let mut hup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let by_signal = tokio::select! {
            _ = async {
                match hup.as_mut() {
                    Some(h) => { h.recv().await; }
                    None => std::future::pending::<()>().await,
                }
            } => true,
            _ = tick.tick() => false,
        };
        let now = stamp(&source);
        if by_signal || now != seen {
            seen = now;
            let _ = app.reload().await;
        }
    }
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// The runtime `serve` runs on. With one CPU to run on (an affinity mask or
/// a cgroup quota of one), a current-thread runtime: every task, timer and
/// socket on the thread that runs `serve`, no work-stealing queues and no
/// wake-ups passed between a worker and the thread that blocks on `serve`
/// (linkerd2-proxy makes the same choice). With more, one worker per CPU.
/// The audit trail's fsyncs and blocking file reads have threads of their
/// own either way.
pub fn serve_runtime(cpus: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if cpus <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus)
            .enable_all()
            .build()
    }
}

/// What the start-up log calls the runtime, read from the runtime itself.
fn runtime_name(rt: &tokio::runtime::Handle) -> &'static str {
    match rt.runtime_flavor() {
        tokio::runtime::RuntimeFlavor::CurrentThread => "current_thread",
        _ => "multi_thread",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_cpu_gets_a_current_thread_runtime_and_more_a_worker_each() {
        let one = serve_runtime(1).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(runtime_name(one.handle()), "current_thread");
        let two = serve_runtime(2).unwrap();
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(two.metrics().num_workers(), 2);
        assert_eq!(runtime_name(two.handle()), "multi_thread");
    }
}
