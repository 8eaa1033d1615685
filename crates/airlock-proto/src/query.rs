//! Query strings as the SDKs encode them (`application/x-www-form-urlencoded`:
//! `+` is a space, `%XX` a byte, a malformed escape stays as written).

/// The `key=value` pairs of a query string, decoded, in order.
pub fn pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

/// Percent-decoding alone, `+` kept (what Python's `quote` produces, as in
/// the SDKs' metadata filter, whose pairs are encoded twice).
pub fn decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_the_sdks_encode() {
        assert_eq!(pairs("a=%20b+c%&x"), vec![("a".to_string(), " b c%".to_string()), ("x".to_string(), String::new())]);
        assert_eq!(pairs("p=%zz%C3%A9"), vec![("p".to_string(), "%zzé".to_string())]);
        assert_eq!(decode("a+b%3Dc"), "a+b=c");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("a&b=c%26"), "a&b=c&");
    }
}
