//! Step 3 of the request path: authorize (principal, project, action →
//! [`Permit`]). Default deny. Only a [`Permit`] lets a request reach the
//! forwarder, and only this module makes one.

use std::collections::BTreeSet;

use crate::authn::Principal;
use crate::config::Config;
use crate::route::Action;

/// Proof that a caller may perform `action` on `project`. Only [`authorize`]
/// builds one; the forwarder requires it.
#[derive(Debug, Clone)]
pub struct Permit {
    pub principal: Principal,
    pub project: String,
    pub secret_path: String,
    pub action: Action,
    /// The grant says: check and audit, never forward.
    pub dry_run: bool,
    /// A grant that allows this demands a request-bound token.
    pub require_bound_token: bool,
    /// A grant that allows this makes every token single-use.
    pub single_use_tokens: bool,
    /// The limits of every grant that allows this.
    pub limits: Vec<crate::limits::GrantLimit>,
    /// The project's upstream pace (requests per second), if any.
    pub upstream_rate_per_s: Option<u32>,
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
) -> Result<Permit, Forbidden> {
    let team_grants = || {
        config
            .teams
            .iter()
            .filter(|t| principal.teams.iter().any(|n| n == &t.name))
            .flat_map(|t| t.grants.iter().map(move |g| (t.name.as_str(), g)))
    };
    let grants = || team_grants().map(|(_, g)| g);
    let alias = match project_headers {
        [] => {
            let projects: BTreeSet<&str> = grants().map(|g| g.project.as_str()).collect();
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
    let matching: Vec<_> = grants()
        .filter(|g| g.project == alias && g.actions.contains(&action))
        .collect();
    if matching.is_empty() {
        return Err(Forbidden::NoGrant);
    }
    let limits = team_grants()
        .filter(|(_, g)| g.project == alias && g.actions.contains(&action))
        .filter(|(_, g)| g.rate_per_minute.is_some() || g.daily_quota.is_some())
        .map(|(team, g)| crate::limits::GrantLimit {
            team: team.to_string(),
            project: alias.clone(),
            action: action.name(),
            rate_per_minute: g.rate_per_minute,
            daily_quota: g.daily_quota,
        })
        .collect();
    Ok(Permit {
        principal: principal.clone(),
        project: alias,
        secret_path: project.secret_path.clone(),
        action,
        // A request is live only if every grant that allows it is live.
        dry_run: matching.iter().all(|g| g.dry_run),
        // The strictest grant's token rules apply.
        require_bound_token: matching.iter().any(|g| g.require_bound_token),
        single_use_tokens: matching.iter().any(|g| g.single_use_tokens),
        limits,
        upstream_rate_per_s: project.upstream_rate_per_s,
    })
}
