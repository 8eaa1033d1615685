//! The egress proxy's first-bytes classifier (`egress::proxy::classify`):
//! the SNI of a TLS ClientHello or the Host of an HTTP/1 request, which
//! the policy then judges.
//!
//! Properties: no panic; names come out lower case; a ClientHello built
//! with a server name is classified as TLS with exactly that name, and
//! every strict prefix of it as incomplete; an HTTP request with a Host
//! gives that host without its port.
#![no_main]

use airlock_server::egress::proxy::{classify, Hello};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Input {
    raw: Vec<u8>,
    name: Vec<u8>,
    session_id: Vec<u8>,
    /// Extensions sent before the server name (type, data).
    before: Vec<(u16, Vec<u8>)>,
    port: Option<u16>,
}

fn lower(h: &Hello) -> bool {
    match h {
        Hello::Tls(Some(n)) | Hello::Http(Some(n)) => !n.bytes().any(|b| b.is_ascii_uppercase()),
        _ => true,
    }
}

fn u16be(v: &mut Vec<u8>, n: usize) {
    v.extend_from_slice(&(n as u16).to_be_bytes());
}

fn client_hello(name: &[u8], session_id: &[u8], before: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut ext = Vec::new();
    for (ty, data) in before.iter().filter(|(ty, _)| *ty != 0) {
        ext.extend_from_slice(&ty.to_be_bytes());
        u16be(&mut ext, data.len());
        ext.extend_from_slice(data);
    }
    let mut sni = Vec::new();
    u16be(&mut sni, name.len() + 3);
    sni.push(0);
    u16be(&mut sni, name.len());
    sni.extend_from_slice(name);
    ext.extend_from_slice(&[0, 0]);
    u16be(&mut ext, sni.len());
    ext.extend_from_slice(&sni);

    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x11; 32]);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&[0, 2, 0x13, 0x01, 1, 0]);
    u16be(&mut body, ext.len());
    body.extend_from_slice(&ext);

    let mut hs = vec![1, 0];
    u16be(&mut hs, body.len());
    hs.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    u16be(&mut rec, hs.len());
    rec.extend_from_slice(&hs);
    rec
}

fuzz_target!(|input: Input| {
    assert!(lower(&classify(&input.raw)));

    let session_id = &input.session_id[..input.session_id.len().min(32)];
    let mut before: Vec<(u16, Vec<u8>)> = input.before.into_iter().take(8).collect();
    for (_, d) in &mut before {
        d.truncate(200);
    }
    let name = &input.name[..input.name.len().min(255)];
    let hello = client_hello(name, session_id, &before);
    if hello.len() - 5 <= u16::MAX as usize {
        let want = String::from_utf8_lossy(name).to_ascii_lowercase();
        assert_eq!(classify(&hello), Hello::Tls(Some(want)));
        for cut in [1, 4, 5, 6, hello.len() / 2, hello.len() - 1] {
            if cut > 0 && cut < hello.len() {
                assert_eq!(classify(&hello[..cut]), Hello::Partial, "prefix of {cut} bytes");
            }
        }
    }

    let host: String = input.name.iter().map(|b| b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-"[*b as usize % 64] as char).collect();
    if !host.is_empty() {
        let with_port = match input.port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        };
        let req = format!("GET /x HTTP/1.1\r\nHost: {with_port}\r\nUser-Agent: fuzz\r\n\r\n");
        assert_eq!(classify(req.as_bytes()), Hello::Http(Some(host.to_ascii_lowercase())));
    }
});
