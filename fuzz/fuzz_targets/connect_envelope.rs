//! Connect envelope framing: the incremental decoder every stream reader
//! uses, the SDK's and server's `MessageReader` over it, and the agent's
//! decoding of a streaming request.
//!
//! Properties: no panic; re-encoding the decoded envelopes gives back the
//! input's prefix byte for byte, whatever the chunking; what is left is
//! reported as truncated exactly when it is not empty; a refused envelope
//! is refused for the reason its header gives; the reader yields one item
//! per message envelope and ends as the framing says.
#![no_main]

use airlock_fuzz::Chunks;
use airlock_proto::connect::{envelope, EnvelopeDecoder, FrameError, MessageReader, StreamError, FLAG_COMPRESSED, FLAG_END_STREAM, MAX_ENVELOPE};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a limit (small ones make `TooLarge` reachable)
    // and the chunk size the body arrives in.
    let Some((&ctl, input)) = data.split_first() else { return };
    let limit = (ctl as usize & 0x0f) * 16;
    let max = if limit == 0 { MAX_ENVELOPE } else { limit };
    let chunk = 1 + (ctl as usize >> 4) * 3;

    let mut d = EnvelopeDecoder::with_limit(limit);
    let mut got = Vec::new();
    let mut reencoded = Vec::new();
    let mut error = None;
    'feed: for piece in input.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_envelope() {
                Ok(Some(e)) => {
                    assert!(e.payload.len() <= max);
                    assert_eq!(e.flags & FLAG_COMPRESSED, 0);
                    reencoded.extend_from_slice(&envelope(e.flags, &e.payload));
                    got.push(e);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(&input[..reencoded.len()], &reencoded[..], "decoded envelopes are not the input");
    let rest = &input[reencoded.len()..];
    let header_len = |r: &[u8]| u32::from_be_bytes([r[1], r[2], r[3], r[4]]) as usize;
    match error {
        None => {
            assert_eq!(d.finish().is_ok(), rest.is_empty());
            if rest.len() >= 5 {
                assert!(rest.len() < 5 + header_len(rest), "a complete envelope was left undecoded");
            }
        }
        Some(FrameError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (header_len(rest), max));
            assert!(len > max);
        }
        Some(FrameError::Compressed) => assert_ne!(rest[0] & FLAG_COMPRESSED, 0),
        Some(FrameError::Truncated { .. }) => panic!("next_envelope reported truncation"),
    }

    // The reader over the same body: one item per message envelope before
    // the end-of-stream one, then how the stream ended.
    if limit == 0 {
        let mut r = MessageReader::new(Chunks::split(input, chunk));
        let mut items = Vec::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        loop {
            match r.poll_message::<serde_json::Value>(&mut cx) {
                std::task::Poll::Ready(Some(item)) => items.push(item),
                std::task::Poll::Ready(None) => break,
                std::task::Poll::Pending => panic!("an in-memory body never waits"),
            }
        }
        let end = got.iter().position(|e| e.flags & FLAG_END_STREAM != 0);
        let messages = &got[..end.unwrap_or(got.len())];
        for (e, item) in messages.iter().zip(&items) {
            let want: Result<serde_json::Value, _> = serde_json::from_slice(&e.payload);
            match (item, want) {
                (Ok(a), Ok(b)) => assert_eq!(a, &b),
                (Err(StreamError::Decode { .. }), Err(_)) => {}
                (a, b) => panic!("reader gave {a:?} for a message parsing as {b:?}"),
            }
        }
        match end {
            Some(i) => {
                let remote = serde_json::from_slice::<airlock_proto::connect::EndStream>(&got[i].payload).ok().and_then(|e| e.error);
                assert_eq!(items.len(), messages.len() + usize::from(remote.is_some()));
                assert!(r.end.is_some());
            }
            None => {
                assert_eq!(items.len(), messages.len() + 1, "the stream's break is reported once");
                let last = items.last().expect("one item");
                match error {
                    Some(_) => assert!(matches!(last, Err(StreamError::Frame(_)))),
                    None => assert!(matches!(last, Err(StreamError::Unterminated))),
                }
            }
        }
    }

    // The agent's streaming request: bare JSON, or exactly the first envelope.
    let req = airlock_agent::rpc::decode_stream_request::<serde_json::Value>(Bytes::copy_from_slice(input));
    if input.first() == Some(&b'{') {
        assert_eq!(req.is_ok(), serde_json::from_slice::<serde_json::Value>(input).is_ok());
    } else if let Ok(v) = req {
        let mut d = EnvelopeDecoder::with_limit(airlock_agent::rpc::MAX_UNARY);
        d.push(input);
        let first = d.next_envelope().expect("accepted framing").expect("one envelope");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&first.payload).expect("accepted json"), v);
    }
    let unary = airlock_agent::rpc::decode_unary::<serde_json::Value>(input);
    if input.iter().all(u8::is_ascii_whitespace) {
        assert_eq!(unary.expect("empty message"), serde_json::json!({}));
    } else {
        assert_eq!(unary.ok(), serde_json::from_slice::<serde_json::Value>(input).ok());
    }
});
