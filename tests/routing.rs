//! Steps 2-4 and their order: the route is matched exactly as received,
//! grants default to deny, and each check comes before the next.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

fn auth(token: &str) -> Vec<(String, String)> {
    vec![("Authorization".into(), format!("Bearer {token}"))]
}

#[tokio::test]
async fn path_tricks_and_absolute_form_targets_never_reach_batch() {
    let w = World::new().await;
    let gw = w.start().await;
    let token = w.token("growth");
    for target in [
        "/2.8/campaigns/delete/",
        "//2.8/campaigns/delete",
        "/2.8/campaigns/%64elete",
        "/2.8/campaigns/../campaigns/delete",
        "/2.8/campaigns/%2e%2e/campaigns/delete",
        "/2.8/campaigns%2fdelete",
        "/2.8/campaigns/delete;x=1",
        "/2.8/campaigns/delete?x=1",
        "/2.8/campaigns/delete/../create",
        "https://api.batch.com/2.8/campaigns/delete",
        "http://127.0.0.1/2.8/campaigns/delete",
        "/3.0/campaigns/delete",
        "/2.8/campaigns/create",
    ] {
        let r = gw
            .request("POST", target, &auth(&token), &delete_body(&campaign_id()))
            .await;
        r.assert_gateway_error(404, "route_not_found", "20");
    }
    for method in ["GET", "PUT", "DELETE", "PATCH"] {
        let r = gw
            .request(method, DELETE, &auth(&token), &delete_body(&campaign_id()))
            .await;
        r.assert_gateway_error(404, "route_not_found", "20");
    }
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn checks_run_in_the_contract_order() {
    let w = World::new().await;
    let gw = w.start().await;
    // 1 before 2: a bad token on a bad route with a bad body is a 401.
    let r = gw.request("GET", "/nope", &auth("x.y.z"), b"{{").await;
    r.assert_gateway_error(401, "token_invalid", "10");
    // 2 before 3: no grant on an unknown route is a 404.
    let r = gw
        .request("GET", DELETE, &auth(&w.token("support")), b"")
        .await;
    r.assert_gateway_error(404, "route_not_found", "20");
    // 3 before 4: no grant with a broken body is a 403.
    let mut h = auth(&w.token("support"));
    h.push(("X-Batch-Project".into(), "marketing-prod".into()));
    let r = gw.request("POST", DELETE, &h, b"not json").await;
    r.assert_gateway_error(403, "forbidden", "12");
    assert_eq!(w.batch().count(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn grants_default_to_deny_and_the_project_must_be_unambiguous() {
    let w = World::new().await;
    let gw = w.start().await;
    let body = delete_body(&campaign_id());
    let cases: [(&str, &[&str], u16, &str); 6] = [
        ("intruders", &[], 403, "forbidden"),
        ("growth", &["sales-prod"], 403, "forbidden"),
        ("growth", &["nope-prod"], 403, "forbidden"),
        ("growth", &["batch/marketing-prod"], 403, "forbidden"),
        ("ops", &[], 403, "forbidden"),
        (
            "ops",
            &["marketing-prod", "sales-prod"],
            400,
            "malformed_parameter",
        ),
    ];
    for (team, projects, status, reason) in cases {
        let mut h = auth(&w.token(team));
        for p in projects {
            h.push(("X-Batch-Project".into(), p.to_string()));
        }
        let r = gw.request("POST", DELETE, &h, &body).await;
        assert_eq!(
            (r.status, r.header("x-gateway-error")),
            (status, Some(reason)),
            "{team} {projects:?}"
        );
    }
    assert_eq!(w.batch().count(), 0);
    let details: Vec<String> = w
        .audit_records()
        .iter()
        .map(|r| r["detail"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        details,
        [
            "no_grant",
            "no_grant",
            "unknown_project",
            "unknown_project",
            "ambiguous_project",
            "duplicate_project_header"
        ]
    );
    gw.stop().await;
}
