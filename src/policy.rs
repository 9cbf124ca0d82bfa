//! Steps 2 and 3 of the request path: route (method + path → [`Action`]) and
//! authorize (principal, project, action → [`Permit`]). Default deny.
//!
//! Routing matches the request target exactly as received: no decoding, no
//! normalisation, no query string. Only a [`Permit`] lets a request reach
//! the forwarder, and only this module makes one.

use std::collections::BTreeSet;

use crate::authn::Principal;
use crate::config::Config;

/// What a caller may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CampaignsDelete,
}

impl Action {
    const ALL: &'static [Action] = &[Action::CampaignsDelete];

    pub fn name(self) -> &'static str {
        match self {
            Action::CampaignsDelete => "campaigns.delete",
        }
    }

    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.name() == s)
    }

    pub fn names() -> Vec<&'static str> {
        Action::ALL.iter().map(|a| a.name()).collect()
    }
}

/// Maps a method and a raw request target to an action.
///
/// `POST /2.N/campaigns/delete` with `N` one or two digits. The target must
/// match byte for byte: a query, a trailing slash, `//`, percent-encoding or
/// dot segments make it unknown (404), so nothing but the canonical path can
/// be forwarded.
pub fn route(method: &http::Method, target: &str) -> Option<Action> {
    if method != http::Method::POST {
        return None;
    }
    let rest = target.strip_prefix("/2.")?;
    let (minor, tail) = rest.split_once('/')?;
    let minor_ok = (1..=2).contains(&minor.len())
        && minor.bytes().all(|b| b.is_ascii_digit())
        && !(minor.len() == 2 && minor.starts_with('0'));
    if minor_ok && tail == "campaigns/delete" {
        Some(Action::CampaignsDelete)
    } else {
        None
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn routes_every_two_dot_version_to_delete() {
        for v in ["1", "8", "11", "13", "99"] {
            let p = format!("/2.{v}/campaigns/delete");
            assert_eq!(
                route(&Method::POST, &p),
                Some(Action::CampaignsDelete),
                "{p}"
            );
        }
    }

    #[test]
    fn refuses_path_tricks_and_other_methods() {
        for p in [
            "/2.8/campaigns/delete/",
            "//2.8/campaigns/delete",
            "/2.8/campaigns/%64elete",
            "/2.8/campaigns/../campaigns/delete",
            "/2.8/campaigns/%2e%2e/campaigns/delete",
            "/2.8/campaigns%2fdelete",
            "/2.8/campaigns/delete;x=1",
            "/2.8/campaigns/delete?x=1",
            "/2.8/campaigns/delete/../create",
            "/2.08/campaigns/delete",
            "/2.100/campaigns/delete",
            "/2./campaigns/delete",
            "/3.0/campaigns/delete",
            "/v2.8/campaigns/delete",
            "https://api.batch.com/2.8/campaigns/delete",
            "/2.8/campaigns/create",
            "*",
            "",
        ] {
            assert_eq!(route(&Method::POST, p), None, "{p}");
        }
        for m in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
            assert_eq!(route(&m, "/2.8/campaigns/delete"), None);
        }
    }
}
