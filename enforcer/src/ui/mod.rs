//! The live view (`GET /ui` on the admin listener): a page that draws who calls what, how much,
//! and what was refused, from the agent's own state. Everything it needs is embedded in the
//! binary (hand-written HTML, CSS, JavaScript and SVG; no CDN, works offline).
//!
//! - [`graph`]: the `/debug/graph` model (workloads -> services, cumulative counters per edge);
//! - [`refusal`]: each refusal with its fix (`--allow`, the ServiceEntry `enforcer suggest` drafts);
//! - [`stream`]: `/debug/events/stream`, server-sent events carrying both to the page;
//! - the page itself: `ui/assets/` (index.html, app.js, style.css), served by [`asset`].

pub mod graph;
pub mod refusal;
pub mod stream;

pub use graph::Graph;

/// The page's files: (URL path, content type, body).
const ASSETS: &[(&str, &str, &str)] = &[
    ("/ui", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("/ui/app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("/ui/style.css", "text/css; charset=utf-8", include_str!("assets/style.css")),
    ("/ui/favicon.svg", "image/svg+xml", include_str!("assets/favicon.svg")),
];

/// Nothing outside this origin: the page loads only its own files and talks only to its agent.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; \
     script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// The embedded file at `path` (`/ui`, `/ui/`, `/ui/index.html` are the page): (content type, body).
pub fn asset(path: &str) -> Option<(&'static str, &'static str)> {
    let path = match path.trim_end_matches('/') {
        "/ui/index.html" => "/ui",
        p => p,
    };
    ASSETS.iter().find(|(p, _, _)| *p == path).map(|(_, t, b)| (*t, *b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_embedded_and_reference_nothing_outside() {
        assert!(asset("/ui").unwrap().1.contains("<svg"), "the page draws in SVG");
        assert_eq!(asset("/ui/"), asset("/ui"));
        assert_eq!(asset("/ui/index.html"), asset("/ui"));
        assert!(asset("/ui/nope.js").is_none());
        for (path, _, body) in ASSETS {
            for bad in ["http://", "https://", "//cdn", "@import"] {
                // The SVG namespace URI is an identifier, not a fetch.
                let cleaned = body.replace("http://www.w3.org/2000/svg", "");
                assert!(!cleaned.contains(bad), "{path} references {bad}");
            }
        }
        let html = asset("/ui").unwrap().1;
        assert!(html.contains("/ui/app.js") && html.contains("/ui/style.css"));
    }
}
