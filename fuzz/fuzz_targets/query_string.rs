//! Query strings, as the server and the agent decode them (one function,
//! `airlock_proto::query::pairs`), and the agent's `/files` parameters.
//!
//! Properties: no panic; encoding any pairs the way the SDKs do and
//! decoding them gives the same pairs; `decode` inverts percent-encoding;
//! `/files` takes the first occurrence of each parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    raw: String,
    pairs: Vec<(String, String)>,
}

fuzz_target!(|input: Input| {
    let got = airlock_proto::query::pairs(&input.raw);
    let (path, username, signature, expiration) = airlock_agent::files::fuzzing::parse_query(&input.raw);
    let first = |k: &str| got.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(path, first("path"));
    assert_eq!(username, first("username"));
    assert_eq!(signature, first("signature"));
    assert_eq!(expiration, first("signature_expiration"));

    let encoded = form_urlencoded::Serializer::new(String::new()).extend_pairs(&input.pairs).finish();
    assert_eq!(airlock_proto::query::pairs(&encoded), input.pairs, "{encoded:?}");

    let quoted = percent_encoding::utf8_percent_encode(&input.raw, percent_encoding::NON_ALPHANUMERIC).to_string();
    assert_eq!(airlock_proto::query::decode(&quoted), input.raw);
    let _ = airlock_proto::query::decode(&input.raw);
});
