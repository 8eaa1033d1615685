//! Every random value the server makes: sandbox ids, access tokens, API
//! keys. One source, the kernel's (`getrandom`), and it fails loudly: a
//! value that could not be drawn is an error, never zeros (which would
//! mint the key `e2b_000…` for everyone).

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("the system random source failed: {0}")]
pub struct RandomError(getrandom::Error);

fn bytes<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).map_err(RandomError)?;
    Ok(buf)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// 20 lowercase alphanumerics, like E2B's ids (no `-` or `.`: ids appear
/// in host names).
pub fn sandbox_id() -> Result<String, RandomError> {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    // Rejection sampling keeps every character equally likely: bytes of
    // 252 and above (252 = 7 * 36) are drawn again.
    let mut out = String::with_capacity(20);
    while out.len() < 20 {
        for b in bytes::<32>()? {
            if b < 252 && out.len() < 20 {
                out.push(A[(b % 36) as usize] as char);
            }
        }
    }
    Ok(out)
}

/// A sandbox's `envdAccessToken`: 160 bits, hex.
pub fn access_token() -> Result<String, RandomError> {
    Ok(hex(&bytes::<20>()?))
}

/// A random (version 4) UUID, as E2B's build ids are (the SDKs parse them).
pub fn uuid() -> Result<String, RandomError> {
    let mut b = bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex(&b);
    Ok(format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..]))
}

/// A new API key: `e2b_` + 40 hex characters, the format SDKs accept.
pub fn api_key() -> Result<String, RandomError> {
    Ok(format!("e2b_{}", hex(&bytes::<20>()?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_uniqueness() {
        let id = sandbox_id().expect("id");
        assert_eq!(id.len(), 20);
        assert!(id.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        let k = api_key().expect("key");
        assert!(k.starts_with("e2b_") && k.len() == 44 && k[4..].bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(k, api_key().expect("key"));
        assert_ne!(access_token().expect("t"), access_token().expect("t"));
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| sandbox_id().expect("id")).collect();
        assert_eq!(ids.len(), 1000);
    }
}
