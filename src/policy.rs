//! Step 3 of the request path: authorize (principal, project, action →
//! [`Permit`]). Default deny. Only a [`Permit`] lets a request reach the
//! forwarder, and only this module makes one.

use std::collections::BTreeSet;

use crate::authn::Principal;
use crate::config::{Config, GrantConfig};
use crate::route::Action;

/// Proof that a caller may perform `action` on `project` at `target`.
/// Only [`authorize`] builds one (its fields are private); the forwarder
/// requires it and reads what it sends from it.
#[derive(Debug, Clone)]
pub struct Permit {
    project: String,
    secret_path: String,
    action: Action,
    target: String,
    dry_run: bool,
    require_bound_token: bool,
    single_use_tokens: bool,
    limits: Vec<crate::limits::GrantLimit>,
    upstream_rate_per_s: Option<u32>,
}

impl Permit {
    /// The project alias.
    pub fn project(&self) -> &str {
        &self.project
    }
    /// Where the project's Batch keys are.
    pub fn secret_path(&self) -> &str {
        &self.secret_path
    }
    pub fn action(&self) -> Action {
        self.action
    }
    /// The request target as routed, forwarded as it is.
    pub fn target(&self) -> &str {
        &self.target
    }
    /// Every grant that allows this says: check and audit, never forward.
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
    /// A grant that allows this demands a request-bound token.
    pub fn require_bound_token(&self) -> bool {
        self.require_bound_token
    }
    /// A grant that allows this makes every token single-use.
    pub fn single_use_tokens(&self) -> bool {
        self.single_use_tokens
    }
    /// The limits of every grant that allows this.
    pub fn limits(&self) -> &[crate::limits::GrantLimit] {
        &self.limits
    }
    /// The project's upstream pace (requests per second), if any.
    pub fn upstream_rate_per_s(&self) -> Option<u32> {
        self.upstream_rate_per_s
    }
}

/// One grant that allows a caller's team an action on a project, with
/// where it sits in the config (`teams[team].grants[grant]`).
pub struct Matched<'a> {
    pub team: usize,
    pub grant: usize,
    pub team_name: &'a str,
    pub config: &'a GrantConfig,
}

/// Every grant of the caller's teams for `project` and `action`: what
/// [`authorize`] decides by and `policy explain` shows.
pub fn matching_grants<'a>(
    config: &'a Config,
    teams: &'a [String],
    project: &'a str,
    action: Action,
) -> impl Iterator<Item = Matched<'a>> + 'a {
    team_grants(config, teams)
        .filter(move |m| m.config.project == project && m.config.actions.contains(&action))
}

/// Every grant of the caller's teams.
fn team_grants<'a>(
    config: &'a Config,
    teams: &'a [String],
) -> impl Iterator<Item = Matched<'a>> + 'a {
    config
        .teams
        .iter()
        .enumerate()
        .filter(move |(_, t)| teams.iter().any(|n| n == &t.name))
        .flat_map(|(ti, t)| {
            t.grants.iter().enumerate().map(move |(gi, g)| Matched {
                team: ti,
                grant: gi,
                team_name: t.name.as_str(),
                config: g,
            })
        })
}

/// Why a caller was refused at step 3.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("the X-Batch-Project header appears more than once")]
    DuplicateProjectHeader,
    #[error("project alias is not known")]
    UnknownProject,
    #[error("the caller's team holds grants for several projects; name one in X-Batch-Project")]
    AmbiguousProject,
    #[error("the caller's team holds no grant for this project and action")]
    NoGrant,
}

impl Forbidden {
    pub fn detail(&self) -> &'static str {
        match self {
            Forbidden::DuplicateProjectHeader => "duplicate_project_header",
            Forbidden::UnknownProject => "unknown_project",
            Forbidden::AmbiguousProject => "ambiguous_project",
            Forbidden::NoGrant => "no_grant",
        }
    }
}

/// Decides step 3. `project_headers` are the values of every
/// `X-Batch-Project` header the caller sent.
pub fn authorize(
    config: &Config,
    principal: &Principal,
    project_headers: &[&str],
    action: Action,
    target: &str,
) -> Result<Permit, Forbidden> {
    let alias = match project_headers {
        [] => {
            let projects: BTreeSet<&str> = team_grants(config, &principal.teams)
                .map(|m| m.config.project.as_str())
                .collect();
            match projects.len() {
                0 => return Err(Forbidden::NoGrant),
                1 => projects.into_iter().next().unwrap_or_default().to_string(),
                _ => return Err(Forbidden::AmbiguousProject),
            }
        }
        [one] => one.to_string(),
        _ => return Err(Forbidden::DuplicateProjectHeader),
    };
    let project = config.project(&alias).ok_or(Forbidden::UnknownProject)?;
    let matching: Vec<Matched<'_>> =
        matching_grants(config, &principal.teams, &alias, action).collect();
    if matching.is_empty() {
        return Err(Forbidden::NoGrant);
    }
    let limits = matching
        .iter()
        .filter(|m| m.config.rate_per_minute.is_some() || m.config.daily_quota.is_some())
        .map(|m| crate::limits::GrantLimit {
            team: m.team_name.to_string(),
            project: alias.clone(),
            action: action.name(),
            rate_per_minute: m.config.rate_per_minute,
            daily_quota: m.config.daily_quota,
        })
        .collect();
    Ok(Permit {
        secret_path: project.secret_path.clone(),
        action,
        target: target.to_string(),
        // A request is live only if every grant that allows it is live.
        dry_run: matching.iter().all(|m| m.config.dry_run),
        // The strictest grant's token rules apply.
        require_bound_token: matching.iter().any(|m| m.config.require_bound_token),
        single_use_tokens: matching.iter().any(|m| m.config.single_use_tokens),
        limits,
        upstream_rate_per_s: project.upstream_rate_per_s,
        project: alias,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The config tests' base (team growth: one live grant on
    /// marketing-prod), plus a project and a team of two grants.
    fn config() -> Config {
        let text = format!(
            "{}{}",
            crate::config::tests::BASE,
            r#"
[[projects]]
alias = "other"
secret_path = "batch/other"
[[teams]]
name = "ops"
[[teams.grants]]
project = "other"
actions = ["campaigns.delete"]
[[teams.grants]]
project = "marketing-prod"
actions = ["campaigns.delete"]
dry_run = true
single_use_tokens = true
daily_quota = 5
"#
        );
        Config::parse(&text, std::path::Path::new("/etc/bgw/g.toml")).unwrap()
    }

    fn caller(teams: &[&str]) -> Principal {
        Principal {
            iss: "https://idp.test".into(),
            sub: "svc".into(),
            teams: teams.iter().map(|t| t.to_string()).collect(),
            memberships: Vec::new(),
            jti: None,
            exp: 0,
            binding: Default::default(),
            recorded: crate::common::Memo::new(),
        }
    }

    #[test]
    fn a_permit_carries_what_every_matching_grant_says_and_the_routed_target() {
        let cfg = config();
        let target = "/2.8/campaigns/delete";
        let act = Action::CampaignsDelete;
        let both = caller(&["growth", "ops"]);
        let p = authorize(&cfg, &both, &["marketing-prod"], act, target).unwrap();
        assert_eq!(
            (p.project(), p.secret_path(), p.target()),
            ("marketing-prod", "batch/marketing-prod", target)
        );
        // Live unless every grant is a dry run; the strictest token rule.
        assert!(!p.dry_run());
        assert!(p.single_use_tokens());
        assert_eq!(p.limits().len(), 1, "only ops' grant has a limit");
        // What explain lists is what authorize decided by: two grants,
        // with their places in the config.
        let places: Vec<(usize, usize)> = matching_grants(&cfg, &both.teams, "marketing-prod", act)
            .map(|m| (m.team, m.grant))
            .collect();
        assert_eq!(places, [(0, 0), (1, 1)]);
        let growth = caller(&["growth"]);
        let p = authorize(&cfg, &growth, &[], act, target).unwrap();
        assert!(!p.dry_run() && !p.single_use_tokens());
        let ops = caller(&["ops"]);
        let p = authorize(&cfg, &ops, &["marketing-prod"], act, target).unwrap();
        assert!(p.dry_run() && p.single_use_tokens());
        assert_eq!(
            authorize(&cfg, &growth, &["other"], act, target).unwrap_err(),
            Forbidden::NoGrant
        );
        assert_eq!(
            authorize(&cfg, &both, &[], act, target).unwrap_err(),
            Forbidden::AmbiguousProject
        );
    }
}
