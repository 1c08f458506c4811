//! The web chat client (`web/` in the repository), embedded in the binary so
//! the page works offline with no other files.
//!
//! Every asset is sent with `Cache-Control: no-cache` and a content-hash
//! `ETag`: browsers revalidate on each load (a `304` when nothing changed),
//! so a new binary's page is picked up at once.

use hyper::header::{
    HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, ETAG, IF_NONE_MATCH,
    REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::{Response, StatusCode};

use super::http::{respond, Body};

/// One embedded file.
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
    etag: u64,
}

const fn asset(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Asset {
    Asset {
        path,
        content_type,
        body,
        etag: fnv1a(body),
    }
}

/// FNV-1a, 64-bit: enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

pub static ASSETS: &[Asset] = &[
    asset(
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    asset(
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    asset(
        "/msgpack.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/msgpack.js"),
    ),
    asset(
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
    asset(
        "/favicon.svg",
        "image/svg+xml",
        include_bytes!("../../web/favicon.svg"),
    ),
];

/// The page may load only its own scripts and styles and talk only to its
/// own server; user content is never HTML, and this backs that up.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub fn lookup(path: &str) -> Option<&'static Asset> {
    let path = if path == "/index.html" { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

pub fn is_asset(path: &str) -> bool {
    lookup(path).is_some()
}

/// Serves the asset at `path` (which `is_asset` accepted).
pub fn serve(path: &str, headers: &HeaderMap) -> Response<Body> {
    let Some(a) = lookup(path) else {
        return respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found",
        );
    };
    let etag = format!("\"{:016x}\"", a.etag);
    let fresh = headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/") == etag
        });
    let mut r = if fresh {
        respond(StatusCode::NOT_MODIFIED, a.content_type, "")
    } else {
        respond(StatusCode::OK, a.content_type, a.body)
    };
    let h = r.headers_mut();
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(ETAG, v);
    }
    if a.content_type.starts_with("text/html") {
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
        h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_found_and_typed() {
        for a in ASSETS {
            assert!(!a.body.is_empty(), "{} is empty", a.path);
            assert!(is_asset(a.path));
            let r = serve(a.path, &HeaderMap::new());
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()["content-type"], a.content_type);
            assert_eq!(r.headers()["cache-control"], "no-cache");
        }
        assert!(is_asset("/index.html"));
        assert!(!is_asset("/nope.js"));
    }

    #[test]
    fn matching_etag_is_not_modified() {
        let r = serve("/app.js", &HeaderMap::new());
        let etag = r.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag);
        assert_eq!(serve("/app.js", &h).status(), StatusCode::NOT_MODIFIED);
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"0\""));
        assert_eq!(serve("/app.js", &h).status(), StatusCode::OK);
    }

    #[test]
    fn page_references_only_embedded_assets() {
        let html = std::str::from_utf8(lookup("/").unwrap().body).unwrap();
        for needle in ["/app.js", "/msgpack.js", "/style.css", "/favicon.svg"] {
            assert!(html.contains(needle), "index.html does not load {needle}");
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no external resources"
        );
    }
}
