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
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match percent_decode(k).as_str() {
            "path" => &mut out.path,
            "username" => &mut out.username,
            "signature" => &mut out.signature,
            "signature_expiration" => &mut out.signature_expiration,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(percent_decode(v));
        }
    }
    out
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a
/// byte; malformed escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_decoded() {
        let got = parse_query(
            "path=%2Fhome%2Fuser%2Fa+b.txt&username=user&path=ignored&x=1&signature=v1_a%2Bb",
        );
        assert_eq!(got.path.as_deref(), Some("/home/user/a b.txt"));
        assert_eq!(got.username.as_deref(), Some("user"));
        assert_eq!(got.signature.as_deref(), Some("v1_a+b"));
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }
}
