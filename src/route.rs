//! Step 2 of the request path: route (method + path → [`Action`]), and the
//! vocabulary of actions that config and policy share. Imports nothing.
//!
//! Routing matches the request target exactly as received: no decoding, no
//! normalisation, no query string.

/// What a caller may be granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    CampaignsDelete,
}

impl Action {
    pub const ALL: &'static [Action] = &[Action::CampaignsDelete];

    pub fn name(self) -> &'static str {
        match self {
            Action::CampaignsDelete => "campaigns.delete",
        }
    }

    /// The method Batch's API takes for it.
    pub fn method(self) -> http::Method {
        match self {
            Action::CampaignsDelete => http::Method::POST,
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
