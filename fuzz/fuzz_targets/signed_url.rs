//! Signed `/files` URLs: the agent's check (`files::auth::authorize`)
//! against the one signer (`airlock_proto::envd::file_signature`).
//!
//! Properties: no panic; with a token configured, a request with no
//! access-token header is let through only with the signature the signer
//! made, for the same path, user and operation, and only before it
//! expires; a sent token decides alone; with no token, anything goes.
//!
//! The signature is SHA-256 of `path:op:user:token[:expiration]` (envd's
//! format, which the SDKs compute, so it cannot change). Colons in a user
//! name make two tuples sign the same (path `a:read:b` and user `c` is
//! path `a` and user `b:read:c`); user names cannot contain `:`, so the
//! tuple check below applies to colon-free names.
#![no_main]

use airlock_proto::envd::file_signature;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    /// What the signer signed.
    path: String,
    user: String,
    write: bool,
    expiration: Option<i64>,
    /// The server's token: `tok-` and hex of these bytes (as real tokens, no `:`).
    token: [u8; 8],
    /// The request.
    q_path: Option<String>,
    q_user: Option<String>,
    /// Use the signer's signature (else `q_signature`).
    use_signed: bool,
    q_signature: Option<String>,
    q_expiration: Option<String>,
    q_write: bool,
    header: Option<String>,
    now: i64,
    raw_query: Option<String>,
}

fuzz_target!(|i: Input| {
    let token: String = format!("tok-{}", i.token.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let op = if i.write { "write" } else { "read" };
    let signed = file_signature(&i.path, op, &i.user, &token, i.expiration);
    let sig = if i.use_signed { Some(signed.clone()) } else { i.q_signature.clone() };
    let exp_text = i.q_expiration.clone().or(i.expiration.map(|e| e.to_string()));

    let query = match &i.raw_query {
        Some(raw) => raw.clone(),
        None => {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [("path", &i.q_path), ("username", &i.q_user), ("signature", &sig), ("signature_expiration", &exp_text)] {
                if let Some(v) = v {
                    s.append_pair(k, v);
                }
            }
            s.finish()
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(h) = i.header.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        headers.insert(airlock_proto::envd::ACCESS_TOKEN_HEADER, h);
    }
    let sent = headers.get(airlock_proto::envd::ACCESS_TOKEN_HEADER).filter(|v| !v.is_empty()).cloned();

    assert!(airlock_agent::files::fuzzing::authorize(None, &headers, &query, i.q_write, i.now).is_ok());
    let ok = airlock_agent::files::fuzzing::authorize(Some(&token), &headers, &query, i.q_write, i.now).is_ok();
    if let Some(v) = sent {
        assert_eq!(ok, v.as_bytes() == token.as_bytes(), "a sent token decides alone");
        return;
    }
    if !ok {
        return;
    }
    let (q_path, q_user, q_sig, q_exp) = airlock_agent::files::fuzzing::parse_query(&query);
    let q_exp: Option<i64> = q_exp.map(|e| e.trim().parse().expect("an accepted expiration parses"));
    assert_eq!(q_sig.as_deref(), Some(signed.as_str()), "accepted a signature the signer did not make");
    let q_user = q_user.unwrap_or_default();
    if !i.user.contains(':') && !q_user.contains(':') {
        assert_eq!((q_path.unwrap_or_default(), q_user, i.q_write, q_exp), (i.path.clone(), i.user.clone(), i.write, i.expiration), "a signature verified for another request");
    }
    assert!(q_exp.is_none_or(|e| e >= i.now), "accepted an expired signature");
});
