//! The query string of a `/files` request, decoded as Go's `url.Query`
//! does; which parameters are required is up to the callers.

/// The query parameters `/files` understands; the first occurrence wins,
/// as with Go's `Query().Get`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Query {
    pub(crate) path: Option<String>,
    pub(crate) username: Option<String>,
    pub(crate) signature: Option<String>,
    pub(crate) signature_expiration: Option<String>,
}

pub(crate) fn parse_query(q: &str) -> Query {
    let mut out = Query::default();
    for (k, v) in airlock_proto::query::pairs(q) {
        let slot = match k.as_str() {
            "path" => &mut out.path,
            "username" => &mut out.username,
            "signature" => &mut out.signature,
            "signature_expiration" => &mut out.signature_expiration,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded() {
        let got = parse_query("path=%2Fhome%2Fuser%2Fa+b.txt&username=user&path=ignored&x=1&signature=v1_a%2Bb");
        assert_eq!(got.path.as_deref(), Some("/home/user/a b.txt"));
        assert_eq!(got.username.as_deref(), Some("user"));
        assert_eq!(got.signature.as_deref(), Some("v1_a+b"));
        let path = |q: &str| parse_query(&format!("path={q}")).path.unwrap_or_default();
        assert_eq!(path("100%"), "100%");
        assert_eq!(path("%zz%4"), "%zz%4");
        assert_eq!(path("%C3%A9"), "é");
    }
}
