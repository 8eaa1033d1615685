//! The agent's upload parser (`POST /files`): raw or multipart bodies,
//! gzip-encoded or not, through the same code as a real upload with the
//! files kept in memory instead of written.
//!
//! Properties: no panic on any body and content type; a multipart body
//! built from parts (any content, names, file names, chunking, gzip or
//! not) yields exactly the `file` parts' contents at the destinations the
//! rules give (the `path` parameter, else the file name), or an error
//! exactly when a part has no destination or two share one; a raw upload
//! is the body itself; metadata headers that pass are printable and small.
#![no_main]

use std::io::Write;
use std::path::PathBuf;

use airlock_agent::files::fuzzing::{receive_upload, upload_metadata};
use airlock_fuzz::{block_on, Chunks};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, arbitrary::Arbitrary)]
struct Part {
    /// The form field is `file` (else another one, which is skipped).
    is_file: bool,
    filename: Option<Vec<u8>>,
    content: Vec<u8>,
    typed: bool,
}

#[derive(Debug, arbitrary::Arbitrary)]
enum Input {
    Form { parts: Vec<Part>, path: Option<String>, gzip: bool, chunk: u16, boundary: u32 },
    Raw { content_type: String, gzip_header: bool, path: Option<String>, body: Vec<u8>, chunk: u16, metadata: Vec<(String, Vec<u8>)> },
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn safe_name(b: &[u8]) -> String {
    b.iter().map(|c| b"abcdefghijklmnopqrstuvwxyz0123456789._-/"[*c as usize % 40] as char).collect()
}

fuzz_target!(|input: Input| match input {
    Input::Form { parts, path, gzip: gz, chunk, boundary } => {
        let boundary = format!("airlockfuzz{boundary:08x}");
        let delim = format!("--{boundary}");
        if parts.iter().any(|p| p.content.windows(delim.len()).any(|w| w == delim.as_bytes())) {
            return;
        }
        let path = path.filter(|p| !p.is_empty() && !p.contains(['\r', '\n']));
        let mut body = Vec::new();
        let mut want: Result<Vec<(PathBuf, Vec<u8>)>, ()> = Ok(Vec::new());
        for (n, p) in parts.iter().enumerate() {
            let filename = p.filename.as_deref().map(safe_name).filter(|f| !f.is_empty());
            body.extend_from_slice(format!("{delim}\r\nContent-Disposition: form-data; name=\"{}\"", if p.is_file { "file".to_string() } else { format!("other{n}") }).as_bytes());
            if let Some(f) = &filename {
                body.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
            }
            body.extend_from_slice(b"\r\n");
            if p.typed {
                body.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
            }
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(&p.content);
            body.extend_from_slice(b"\r\n");
            if let (true, Ok(files)) = (p.is_file, want.as_mut()) {
                match path.clone().or(filename) {
                    None => want = Err(()),
                    Some(d) if files.iter().any(|(f, _)| f == std::path::Path::new(&d)) => want = Err(()),
                    Some(d) => files.push((PathBuf::from(d), p.content.clone())),
                }
            }
        }
        body.extend_from_slice(format!("{delim}--\r\n").as_bytes());
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_str(&format!("multipart/form-data; boundary={boundary}")).expect("header"));
        if gz {
            body = gzip(&body);
            headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let got = block_on(receive_upload(&headers, path.as_deref(), Chunks::split(&body, 1 + chunk as usize)));
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(_), Err(())) => {}
            (got, want) => panic!("upload gave {got:?}, expected {want:?}"),
        }
    }
    Input::Raw { content_type, gzip_header, path, body, chunk, metadata } => {
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&content_type) {
            headers.insert(http::header::CONTENT_TYPE, v);
        }
        if gzip_header {
            headers.insert(http::header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        for (k, v) in &metadata {
            if let (Ok(k), Ok(v)) = (http::header::HeaderName::from_bytes(format!("x-metadata-{k}").as_bytes()), HeaderValue::from_bytes(v)) {
                headers.append(k, v);
            }
        }
        if let Ok(m) = upload_metadata(&headers) {
            assert!(m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>() <= 4096);
            assert!(m.iter().all(|(k, v)| k.bytes().all(|b| b.is_ascii_graphic()) && v.bytes().all(|b| (0x20..0x7f).contains(&b))));
        }
        let got = block_on(receive_upload(&headers, path.as_deref(), Chunks::split(&body, 1 + chunk as usize)));
        let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "application/octet-stream" && HeaderValue::from_str(&content_type).is_ok() && !gzip_header {
            match (&path, got) {
                (Some(p), Ok(files)) => assert_eq!(files, vec![(PathBuf::from(p), body)]),
                (None, Err(_)) => {}
                (p, got) => panic!("raw upload to {p:?} gave {got:?}"),
            }
        }
    }
});
