//! Strict JSON objects: the caller's body and a token's header and payload
//! are objects whose member names must be unique (RFC 8259 leaves duplicates
//! to the parser; a security gateway refuses them so that no two readers can
//! disagree on what was sent).

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

/// Why bytes are not a strict JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("not valid JSON")]
    NotJson,
    #[error("not a JSON object")]
    NotObject,
    #[error("a member name appears twice")]
    DuplicateMember,
}

/// The members of a JSON object, in the order sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Members(pub Vec<(String, Value)>);

impl Members {
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Parses `bytes` as one JSON object with unique member names (top level).
pub fn parse_object(bytes: &[u8]) -> Result<Members, JsonError> {
    // One parse when it succeeds (every accepted token and body); why it
    // failed is found by a second, plain parse, on the failure path only.
    serde_json::from_slice::<Members>(bytes).map_err(|_| {
        match serde_json::from_slice::<Value>(bytes) {
            Err(_) => JsonError::NotJson,
            Ok(v) if !v.is_object() => JsonError::NotObject,
            // Valid JSON and an object: only a duplicate name refuses it.
            Ok(_) => JsonError::DuplicateMember,
        }
    })
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object with unique member names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out: Vec<(String, Value)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom("duplicate member name"));
                    }
                    let value: Value = map.next_value()?;
                    out.push((key, value));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_names_are_refused_even_when_values_agree() {
        assert_eq!(
            parse_object(br#"{"a":1,"a":1}"#),
            Err(JsonError::DuplicateMember)
        );
        assert_eq!(
            parse_object(br#"{"a":1,"b":{"c":1}}"#).map(|m| m.0.len()),
            Ok(2)
        );
    }

    #[test]
    fn non_objects_and_garbage_are_told_apart() {
        assert_eq!(parse_object(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"null"), Err(JsonError::NotObject));
        assert_eq!(parse_object(b"{\"a\":"), Err(JsonError::NotJson));
        assert_eq!(parse_object(b""), Err(JsonError::NotJson));
        assert_eq!(parse_object(b"{\"a\":\"\xff\"}"), Err(JsonError::NotJson));
    }
}
