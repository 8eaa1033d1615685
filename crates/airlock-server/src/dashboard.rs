//! The web dashboard: static files embedded in the binary and served at
//! `/dashboard` (and `/`, which redirects there) on the API's own port.
//!
//! The pages are plain HTML, CSS and JavaScript modules (`dashboard/` next
//! to this crate's `src/`, no build step) that call the control API with
//! the API key the user typed, kept in the tab's `sessionStorage` and sent
//! as `X-API-KEY`: no cookie exists, so nothing a sandbox serves can make
//! the browser act with the key. Sandbox calls (files, processes, the
//! terminal) go through this same port with E2B's routing headers and the
//! sandbox's access token, as the SDKs' do.
//!
//! Every answer carries a strict Content-Security-Policy (scripts, styles
//! and connections from this origin only, no inline script, no framing),
//! `nosniff` and `X-Frame-Options: DENY`, and is gzip-compressed for
//! clients that accept it (compressed once, on first use). The dashboard
//! is never served on a sandbox host name (`{port}-{id}.{domain}`, or any
//! other name under `--domain`): those belong to sandboxes, and a page
//! there shares nothing with the dashboard's origin.
//!
//! This module serves files and nothing else: every action of the
//! dashboard is a call the API authenticates like any other client's.

use std::sync::OnceLock;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};

/// The policy on every dashboard answer. `style-src` has no
/// `'unsafe-inline'`: xterm.js's generated styles are applied as
/// constructed style sheets instead (see `term.js`).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; \
                       object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
pub struct Asset {
    pub name: &'static str,
    pub mime: &'static str,
    pub body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $mime:literal) => {
        Asset { name: $name, mime: $mime, body: include_bytes!(concat!("../dashboard/", $name)) }
    };
}

/// Everything the dashboard serves, by the name after `/dashboard/`.
/// `index.html` is the page itself (`/dashboard`).
pub const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("sandbox.js", "text/javascript; charset=utf-8"),
    asset!("term.js", "text/javascript; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("vendor/xterm.mjs", "text/javascript; charset=utf-8"),
    asset!("vendor/addon-fit.mjs", "text/javascript; charset=utf-8"),
    asset!("vendor/xterm.css", "text/css; charset=utf-8"),
];

/// Each asset gzip-compressed and its entity tag, made on first use.
struct Prepared {
    gzip: Vec<u8>,
    etag: String,
}

fn prepared() -> &'static [Prepared] {
    static P: OnceLock<Vec<Prepared>> = OnceLock::new();
    P.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                use sha2::Digest;
                use std::io::Write;
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                // Writing to a Vec cannot fail; an empty body would only
                // make the client fall back to the identity encoding below.
                let gzip = enc.write_all(a.body).and_then(|_| enc.finish()).unwrap_or_default();
                let digest = sha2::Sha256::digest(a.body);
                let etag = format!("\"{}\"", digest.iter().take(12).map(|b| format!("{b:02x}")).collect::<String>());
                Prepared { gzip, etag }
            })
            .collect()
    })
}

/// The routes, merged into the API's router ahead of its fallback. They
/// are public: the files hold no secret, and the page asks for the key.
pub fn router(domain: Option<String>) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(root))
        .route("/dashboard", axum::routing::get(index))
        .route("/dashboard/{*path}", axum::routing::get(file))
        .with_state(Domain(domain.map(|d| d.trim_matches('.').to_ascii_lowercase())))
}

#[derive(Clone)]
struct Domain(Option<String>);

/// Whether `Host` names something under the sandbox domain: a sandbox's
/// port (`{port}-{id}.{domain}`) or a name that only looks unlike one.
pub fn is_sandbox_host(headers: &HeaderMap, domain: Option<&str>) -> bool {
    let Some(domain) = domain.filter(|d| !d.is_empty()) else { return false };
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let host = host.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host, |(h, _)| h);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    host.strip_suffix(domain).is_some_and(|rest| rest.ends_with('.'))
}

fn not_found(path: &str) -> Response {
    crate::http::error(404, format!("no such endpoint: GET {path}")).into_response()
}

async fn root(State(d): State<Domain>, headers: HeaderMap) -> Response {
    if is_sandbox_host(&headers, d.0.as_deref()) {
        return not_found("/");
    }
    let mut r = (StatusCode::FOUND, [(header::LOCATION, HeaderValue::from_static("/dashboard"))]).into_response();
    secure(r.headers_mut());
    r
}

async fn index(State(d): State<Domain>, headers: HeaderMap) -> Response {
    serve(&d, &headers, "index.html", "/dashboard")
}

async fn file(State(d): State<Domain>, headers: HeaderMap, Path(path): Path<String>) -> Response {
    // The page itself only under its own name, so relative links have one base.
    if path == "index.html" {
        return not_found("/dashboard/index.html");
    }
    serve(&d, &headers, &path, &format!("/dashboard/{path}"))
}

fn serve(d: &Domain, headers: &HeaderMap, name: &str, path: &str) -> Response {
    if is_sandbox_host(headers, d.0.as_deref()) {
        return not_found(path);
    }
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else { return not_found(path) };
    let (asset, prep) = (&ASSETS[i], &prepared()[i]);
    let mut h = HeaderMap::new();
    secure(&mut h);
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.mime));
    // Revalidated every time (cheap: a 304), so an upgraded server's files
    // are never mixed with a cached older page.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    if let Ok(v) = HeaderValue::from_str(&prep.etag) {
        h.insert(header::ETAG, v);
    }
    let unchanged = headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == prep.etag));
    if unchanged {
        return (StatusCode::NOT_MODIFIED, h).into_response();
    }
    if accepts_gzip(headers) && !prep.gzip.is_empty() {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        return (StatusCode::OK, h, prep.gzip.clone()).into_response();
    }
    (StatusCode::OK, h, asset.body).into_response()
}

/// `Accept-Encoding` lists gzip (or `*`) with a non-zero quality.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers.get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).any(|item| {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let q = parts.filter_map(|p| p.trim().strip_prefix("q=")).next().and_then(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
        (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
    })
}

fn secure(h: &mut HeaderMap) {
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(h: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(header::HOST, HeaderValue::from_str(h).expect("host"));
        m
    }

    #[test]
    fn sandbox_host_names_are_recognised() {
        let d = Some("sbx.example.com");
        assert!(is_sandbox_host(&host("3000-abc.sbx.example.com"), d));
        assert!(is_sandbox_host(&host("3000-abc.SBX.example.com:8080"), d));
        assert!(is_sandbox_host(&host("anything.sbx.example.com."), d), "not only names the proxy would route");
        assert!(!is_sandbox_host(&host("sbx.example.com"), d), "the domain itself may serve the dashboard");
        assert!(!is_sandbox_host(&host("notsbx.example.com"), d));
        assert!(!is_sandbox_host(&host("3000-abc.sbx.example.com"), None));
        assert!(!is_sandbox_host(&host("127.0.0.1:3000"), d));
    }

    #[test]
    fn gzip_is_used_only_when_accepted() {
        let ae = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT_ENCODING, HeaderValue::from_str(v).expect("ae"));
            m
        };
        assert!(accepts_gzip(&ae("gzip, deflate, br")));
        assert!(accepts_gzip(&ae("br;q=1.0, gzip;q=0.8")));
        assert!(accepts_gzip(&ae("*")));
        assert!(!accepts_gzip(&ae("gzip;q=0")));
        assert!(!accepts_gzip(&ae("br")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn every_asset_compresses_and_the_page_names_only_embedded_files() {
        assert_eq!(prepared().len(), ASSETS.len());
        assert!(prepared().iter().all(|p| !p.gzip.is_empty()));
        let page = std::str::from_utf8(ASSETS[0].body).expect("utf-8");
        for src in page.split("/dashboard/").skip(1).filter_map(|s| s.split('"').next()) {
            assert!(ASSETS.iter().any(|a| a.name == src), "index.html names {src}, which is not embedded");
        }
        assert!(!page.contains("<script>") && !page.contains("style="), "no inline script or style: the CSP refuses them");
    }
}
