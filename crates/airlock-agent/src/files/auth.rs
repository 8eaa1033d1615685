//! Who may use `/files`: the sandbox's access token in `X-Access-Token`
//! (compared by `crate::auth`, like every other route's), or else a valid,
//! unexpired envd URL signature over the path, the operation and the user.
//! The refusal texts are envd's.

use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::query::Query;
use super::FilesError;
use crate::auth::{self, constant_time_eq};

/// Why a `/files` request was refused; the texts are envd's, and an SDK
/// test compares the 401 body exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthError {
    #[error("access token present in header but does not match")]
    TokenMismatch,
    #[error("missing signature query parameter")]
    MissingSignature,
    #[error("invalid signature")]
    InvalidSignature,
    #[error("signature is already expired")]
    Expired,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read,
    Write,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }
}

/// envd's URL signature: `v1_` + unpadded base64 of
/// SHA-256(`path:op:username:token[:expiration]`), over the raw query values.
pub(crate) fn signature(path: &str, op: Op, username: &str, token: &str, expiration: Option<i64>) -> String {
    airlock_proto::envd::file_signature(path, op.as_str(), username, token, expiration)
}

/// The access token in `X-Access-Token`, or else a valid unexpired
/// signature, as envd checks them. With no token configured, anything goes.
pub(crate) fn authorize(token: Option<&str>, headers: &HeaderMap, q: &Query, op: Op, now: i64) -> Result<(), FilesError> {
    let Some(token) = token else { return Ok(()) };
    // A token that is sent decides alone; an empty header counts as none
    // sent, so a signature can still authorise the request (envd's rule).
    let sent = headers.get(airlock_proto::envd::ACCESS_TOKEN_HEADER);
    if sent.is_some_and(|v| !v.is_empty()) {
        return if auth::access_token_ok(Some(token), headers) { Ok(()) } else { Err(AuthError::TokenMismatch.into()) };
    }
    let Some(sig) = q.signature.as_deref() else {
        return Err(AuthError::MissingSignature.into());
    };
    let expiration = match q.signature_expiration.as_deref() {
        None => None,
        Some(s) => Some(s.trim().parse::<i64>().map_err(|_| FilesError::BadRequest(format!("invalid signature_expiration '{s}'")))?),
    };
    let want = signature(q.path.as_deref().unwrap_or(""), op, q.username.as_deref().unwrap_or(""), token, expiration);
    if !constant_time_eq(want.as_bytes(), sig.as_bytes()) {
        return Err(AuthError::InvalidSignature.into());
    }
    if expiration.is_some_and(|exp| exp < now) {
        return Err(AuthError::Expired.into());
    }
    Ok(())
}

pub(crate) fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, StatusCode};

    use super::*;

    #[test]
    fn signature_matches_envd() {
        // Expected values computed independently with Python's hashlib.
        assert_eq!(signature("/home/user/a.txt", Op::Read, "user", "secret-token", None), "v1_powbkN3fI7yRlWaB5Ui2dRUwVP8UZprfSGludREq8sk");
        assert_eq!(signature("/home/user/a.txt", Op::Write, "", "secret-token", Some(1_700_000_000)), "v1_yKIfWf99RjLXk8FXwdccFO8ZrLxrZrfgtk8KVvUBEVc");
    }

    fn q(path: &str, sig: Option<String>, exp: Option<i64>) -> Query {
        Query { path: Some(path.into()), username: None, signature: sig, signature_expiration: exp.map(|e| e.to_string()) }
    }

    #[test]
    fn authorization_follows_envd() {
        let none = HeaderMap::new();
        let tok = Some("tok");
        assert!(authorize(None, &none, &Query::default(), Op::Read, 0).is_ok());
        let err = |r: Result<(), FilesError>| match r {
            Err(FilesError::Auth(a)) => a,
            other => panic!("expected auth error, got {other:?}"),
        };
        assert_eq!(err(authorize(tok, &none, &q("/a", None, None), Op::Read, 0)), AuthError::MissingSignature);

        let good = signature("/a", Op::Read, "", "tok", None);
        assert!(authorize(tok, &none, &q("/a", Some(good.clone()), None), Op::Read, 0).is_ok());
        // A read signature does not authorise a write.
        assert_eq!(err(authorize(tok, &none, &q("/a", Some(good), None), Op::Write, 0)), AuthError::InvalidSignature);

        let exp = signature("/a", Op::Read, "", "tok", Some(100));
        assert!(authorize(tok, &none, &q("/a", Some(exp.clone()), Some(100)), Op::Read, 50).is_ok());
        assert_eq!(err(authorize(tok, &none, &q("/a", Some(exp), Some(100)), Op::Read, 101)), AuthError::Expired);

        let mut hdr = HeaderMap::new();
        hdr.insert("x-access-token", HeaderValue::from_static("tok"));
        assert!(authorize(tok, &hdr, &Query::default(), Op::Write, 0).is_ok());
        hdr.insert("x-access-token", HeaderValue::from_static("nope"));
        assert_eq!(err(authorize(tok, &hdr, &Query::default(), Op::Write, 0)), AuthError::TokenMismatch);
    }

    #[test]
    fn unauthorized_body_is_exact() {
        let r = FilesError::from(AuthError::InvalidSignature).response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
}
