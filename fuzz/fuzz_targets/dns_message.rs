//! The egress resolver's DNS parser (`egress::dns`): questions of queries
//! from sandboxes, A records of upstream answers, and the replies made
//! from a query.
//!
//! Properties: no panic; a parsed question lies inside the message and
//! its name is lower case; a REFUSED reply keeps the question and is a
//! response; an A reply's answer section reads back as exactly its one
//! record; a query made for a name asks for that name.
#![no_main]

use std::net::Ipv4Addr;

use airlock_server::egress::dns;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dns::a_records(data);
    if let Some(q) = dns::question(data) {
        assert!(q.end <= data.len() && q.end > 12);
        assert!(!q.name.bytes().any(|b| b.is_ascii_uppercase()), "{:?}", q.name);
        let refused = dns::reply(data, &q, 5);
        assert_eq!(refused.len(), q.end);
        assert_eq!(&refused[12..], &data[12..q.end], "the question is kept");
        assert!(refused[2] & 0x80 != 0 && refused[3] & 0x0f == 5);
        assert!(dns::question(&refused).is_none(), "a reply is not a query");
        let ip = Ipv4Addr::new(data[0], data[1], 7, 9);
        assert_eq!(dns::a_records(&dns::a_reply(data, &q, ip)), vec![(ip, 5)]);
    }

    // A query made for a name (the proxy checks names from SNI and Host).
    if let Ok(name) = std::str::from_utf8(data) {
        if name.is_ascii() {
            let id = data.len() as u16;
            let labels: Vec<&str> = name.split('.').filter(|l| !l.is_empty()).map(|l| &l[..l.len().min(63)]).collect();
            let q = dns::question(&dns::a_query(name, id));
            // Names are at most 255 bytes on the wire (RFC 1035).
            if labels.iter().map(|l| l.len() + 1).sum::<usize>() < 255 {
                let q = q.expect("our own query parses");
                assert_eq!(q.name, labels.join(".").to_ascii_lowercase());
                assert_eq!(q.qtype, 1);
            }
        }
    }
});
