//! The sandbox's access token, checked in one place for every route that
//! takes it: envd routes (`router`), the code interpreter (`router`, which
//! also takes the traffic token there) and `/files` (`files`, which falls
//! back to a URL signature when no token is sent).
//!
//! Only the comparison lives here. Which routes are public, what a refusal
//! looks like on the wire and the `/files` signature rules belong to the
//! callers.

use airlock_proto::envd::{ACCESS_TOKEN_HEADER, TRAFFIC_TOKEN_HEADER};
use http::HeaderMap;

pub(crate) use airlock_proto::envd::constant_time_eq;

/// Whether header `name` carries exactly `want` (compared in constant time).
fn header_is(headers: &HeaderMap, name: &str, want: &str) -> bool {
    headers.get(name).is_some_and(|got| constant_time_eq(got.as_bytes(), want.as_bytes()))
}

/// The envd rule: with no access token configured anything goes, else
/// `X-Access-Token` must carry it.
pub(crate) fn access_token_ok(want: Option<&str>, headers: &HeaderMap) -> bool {
    match want {
        None => true,
        Some(want) => header_is(headers, ACCESS_TOKEN_HEADER, want),
    }
}

/// Code-interpreter routes: the access token, or the traffic token the
/// official SDKs send instead on every call but `/execute`.
pub(crate) fn interpreter_token_ok(access: Option<&str>, traffic: Option<&str>, headers: &HeaderMap) -> bool {
    match (access, traffic) {
        (Some(_), Some(traffic)) => access_token_ok(access, headers) || header_is(headers, TRAFFIC_TOKEN_HEADER, traffic),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn access_token_must_match_exactly() {
        assert!(access_token_ok(None, &HeaderMap::new()));
        assert!(!access_token_ok(Some("tok"), &HeaderMap::new()));
        assert!(!access_token_ok(Some("tok"), &with("x-access-token", "")));
        assert!(!access_token_ok(Some("tok"), &with("x-access-token", "to")));
        assert!(!access_token_ok(Some("tok"), &with("x-access-token", "tok2")));
        assert!(access_token_ok(Some("tok"), &with("x-access-token", "tok")));
    }

    #[test]
    fn traffic_token_opens_only_the_interpreter() {
        let traffic = with(TRAFFIC_TOKEN_HEADER, "traffic");
        assert!(interpreter_token_ok(Some("tok"), Some("traffic"), &traffic));
        assert!(interpreter_token_ok(Some("tok"), Some("traffic"), &with("x-access-token", "tok")));
        assert!(!interpreter_token_ok(Some("tok"), Some("traffic"), &with(TRAFFIC_TOKEN_HEADER, "tok")));
        assert!(!interpreter_token_ok(Some("tok"), Some("traffic"), &HeaderMap::new()));
        assert!(!access_token_ok(Some("tok"), &traffic));
    }
}
