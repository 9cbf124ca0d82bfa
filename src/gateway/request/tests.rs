//! The request checks, each as the refusal it causes.

use super::*;
use http::HeaderValue;

const ID: &str = "orchestration_0664hyh918hr1gnzka9py5t62nrc0e1f";

fn kind(body: &str) -> Result<String, Reject> {
    validate_body(body.as_bytes()).map_err(|e| e.kind)
}

#[test]
fn the_canonical_body_is_what_serde_json_writes() {
    for id in [ID, "orchestration_00000000000000000000000000000000"] {
        let want = serde_json::json!({ "id": id }).to_string();
        assert_eq!(canonical_body(id), want.as_bytes());
        assert_eq!(validate_body(&canonical_body(id)).ok().as_deref(), Some(id));
    }
    // Never reached from a request (validate_body refused it), and
    // still escaped.
    let odd = "a\"b\\c";
    let want = serde_json::json!({ "id": odd }).to_string();
    assert_eq!(canonical_body(odd), want.as_bytes());
}

#[test]
fn body_rules_map_to_batch_error_codes() {
    assert_eq!(kind(&format!("{{\"id\":\"{ID}\"}}")), Ok(ID.to_string()));
    assert_eq!(
        kind(&format!("{{\"id\":\"\\u006f{}\"}}", &ID[1..])),
        Ok(ID.to_string())
    );
    assert_eq!(kind(""), Err(Reject::MalformedJson));
    assert_eq!(kind("[]"), Err(Reject::MalformedJson));
    assert_eq!(
        kind(&format!("{{\"id\":\"{ID}\",\"id\":\"{ID}\"}}")),
        Err(Reject::MalformedJson)
    );
    assert_eq!(kind("{}"), Err(Reject::MissingParameter));
    assert_eq!(kind("{\"other\":1}"), Err(Reject::MissingParameter));
    assert_eq!(
        kind(&format!("{{\"id\":\"{ID}\",\"force\":true}}")),
        Err(Reject::MalformedParameter)
    );
    for bad in [
        &ID.to_uppercase(),
        &format!("{ID}\n"),
        &ID[..ID.len() - 1],
        "orchestration_",
    ] {
        let body = serde_json::json!({ "id": bad }).to_string();
        assert_eq!(kind(&body), Err(Reject::MalformedParameter), "{bad:?}");
    }
    assert_eq!(kind("{\"id\":12}"), Err(Reject::MalformedParameter));
}

#[test]
fn framing_refuses_ambiguity_only() {
    let mut h = HeaderMap::new();
    assert!(framing_error(&h).is_none());
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("chunked"),
    );
    assert!(framing_error(&h).is_none());
    h.insert(
        header::TRANSFER_ENCODING,
        HeaderValue::from_static("gzip, chunked"),
    );
    assert!(framing_error(&h).is_some());
    let mut h = HeaderMap::new();
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    assert!(framing_error(&h).is_none());
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
    assert!(framing_error(&h).is_some());
    let mut h = HeaderMap::new();
    h.insert(
        crate::framing::AMBIGUOUS_HEADER,
        HeaderValue::from_static("5"),
    );
    assert!(framing_error(&h).is_some());
}

#[test]
fn a_callers_request_id_is_kept_only_when_well_formed() {
    let mut h = HeaderMap::new();
    h.insert("x-request-id", HeaderValue::from_static("abc-1.2_3"));
    assert_eq!(caller_request_id(&h).as_deref(), Some("abc-1.2_3"));
    for bad in ["a b", "a/b", "x\u{7f}"] {
        if let Ok(v) = HeaderValue::from_str(bad) {
            h.insert("x-request-id", v);
            assert_eq!(caller_request_id(&h), None, "{bad:?}");
        }
    }
    h.insert(
        "x-request-id",
        HeaderValue::from_str(&"a".repeat(129)).unwrap(),
    );
    assert_eq!(caller_request_id(&h), None);
}

#[test]
fn every_present_binding_claim_must_match() {
    let body = br#"{"id":"x"}"#;
    let bh = URL_SAFE_NO_PAD.encode(Sha256::digest(body));
    let full = Binding {
        htm: Some("POST".into()),
        htu: Some("/2.8/campaigns/delete".into()),
        bh: Some(bh.clone()),
    };
    assert!(check_binding(&full, "POST", "/2.8/campaigns/delete", body).is_ok());
    assert!(check_binding(&Binding::default(), "POST", "/x", body).is_ok());
    let wrong =
        |b: Binding| check_binding(&b, "POST", "/2.8/campaigns/delete", body).map_err(|e| e.detail);
    assert!(
        wrong(Binding {
            htm: Some("GET".into()),
            ..full.clone()
        })
        .is_err()
    );
    assert!(
        wrong(Binding {
            htu: Some("/2.9/campaigns/delete".into()),
            ..full.clone()
        })
        .is_err()
    );
    assert!(
        wrong(Binding {
            bh: Some(bh.replace('A', "B") + "x"),
            ..full.clone()
        })
        .is_err()
    );
}
