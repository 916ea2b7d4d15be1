//! The pages (CONTRACT §7): the lounge board (`/`), the guest's bay page (`/bay/{site}/{id}`)
//! with its printable QR code, the staff dashboard (`/staff`) with its login, the static
//! assets and the OpenAPI document. Everything is compiled in; the pages are vanilla JS that
//! read the daemon's own API and its event stream.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use super::AppState;

const LAYOUT: &str = include_str!("assets/layout.html");
const CSS: &str = include_str!("assets/app.css");
const COMMON_JS: &str = include_str!("assets/common.js");
const BOARD_JS: &str = include_str!("assets/board.js");
const BAY_JS: &str = include_str!("assets/bay.js");
const STAFF_JS: &str = include_str!("assets/staff.js");
const LOGIN_HTML: &str = include_str!("assets/login.html");
pub const OPENAPI: &str = include_str!("assets/openapi.json");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(board))
        .route("/bay/:site/:charger", get(bay))
        .route("/bay/:site/:charger/qr.svg", get(qr))
        .route("/staff", get(staff))
        .route("/staff/login", post(login))
        .route("/staff/logout", post(logout))
        .route("/assets/:name", get(asset))
        .route("/api/v1/openapi.json", get(openapi))
}

/// Ids as the contract allows them (`[A-Za-z0-9_-]{1,64}`).
fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element.
fn script_json(v: &serde_json::Value) -> String {
    v.to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// A page: the shared layout with a title, a body class, page data and its script.
fn page(
    code: StatusCode,
    title: &str,
    class: &str,
    data: &serde_json::Value,
    script: &str,
) -> Response {
    let html = LAYOUT
        .replace("{{title}}", &escape_html(title))
        .replace("{{class}}", class)
        .replace("{{script}}", script)
        .replace("{{data}}", &script_json(data));
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

fn sites_json(st: &AppState) -> serde_json::Value {
    let sites: Vec<_> = st
        .cfg
        .sites
        .iter()
        .map(|s| {
            json!({
                "id": s.id,
                "name": s.name,
                "timezone": s.timezone,
                "chargers": s.chargers.iter().map(|c| json!({"charger": c.charger, "bay": c.bay})).collect::<Vec<_>>(),
                "zones": s.zones.iter().map(|z| json!({"zone": z.zone, "name": z.name, "capacity": z.capacity})).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!(sites)
}

async fn board(State(st): State<AppState>) -> Response {
    let title = match st.cfg.sites.as_slice() {
        [one] => one.name.clone(),
        _ => "evlounge".to_string(),
    };
    page(
        StatusCode::OK,
        &title,
        "board",
        &json!({"page": "board", "sites": sites_json(&st)}),
        "board.js",
    )
}

fn not_found() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "404",
        "bay notfound",
        &json!({"page": "notfound"}),
        "bay.js",
    )
}

/// The bay label of a known charger: configured, or seen live (auto-registered).
pub(crate) fn known_bay(st: &AppState, site: &str, charger: &str) -> Option<(String, String)> {
    let site_name = st
        .cfg
        .site(site)
        .map(|s| s.name.clone())
        .unwrap_or_else(|| site.to_string());
    let configured = st
        .cfg
        .site(site)
        .and_then(|s| s.chargers.iter().find(|c| c.charger == charger))
        .map(|c| c.bay.clone());
    configured
        .or_else(|| st.live.charger(site, charger).map(|c| c.bay))
        .map(|bay| (site_name, bay))
}

async fn bay(
    State(st): State<AppState>,
    Path((site, charger)): Path<(String, String)>,
) -> Response {
    if !valid_id(&site) || !valid_id(&charger) {
        return not_found();
    }
    let Some((site_name, bay)) = known_bay(&st, &site, &charger) else {
        return not_found();
    };
    let channels: Vec<&str> = st
        .cfg
        .http
        .guest_channels
        .iter()
        .map(String::as_str)
        .collect();
    page(
        StatusCode::OK,
        &format!("{bay} · {site_name}"),
        "bay",
        &json!({
            "page": "bay",
            "site": site,
            "site_name": site_name,
            "charger": charger,
            "bay": bay,
            "channels": channels,
        }),
        "bay.js",
    )
}

/// The public base URL; when it names port 0 (`http.listen` on `:0` without a
/// `http.public_url`) the request's own host stands in.
fn base_url(st: &AppState, headers: &HeaderMap) -> String {
    let configured = st.cfg.http.public_url.trim_end_matches('/');
    if configured.ends_with(":0") {
        if let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) {
            if host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            {
                return format!("http://{host}");
            }
        }
    }
    configured.to_string()
}

async fn qr(
    State(st): State<AppState>,
    headers: HeaderMap,
    Path((site, charger)): Path<(String, String)>,
) -> Response {
    if !valid_id(&site) || !valid_id(&charger) {
        return not_found();
    }
    let Some((site_name, bay)) = known_bay(&st, &site, &charger) else {
        return not_found();
    };
    let url = format!("{}/bay/{site}/{charger}", base_url(&st, &headers));
    match qr_svg(&url, &bay, &site_name) {
        Some(svg) => (
            [
                (header::CONTENT_TYPE, "image/svg+xml"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            svg,
        )
            .into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "cannot encode QR code").into_response(),
    }
}

/// A printable label: the QR code of `url`, the bay, the site and the URL in words.
pub fn qr_svg(url: &str, bay: &str, site_name: &str) -> Option<String> {
    let code = qrcode::QrCode::with_error_correction_level(url, qrcode::EcLevel::M).ok()?;
    let n = code.width();
    let colors = code.to_colors();
    let quiet = 4;
    let unit = 8;
    let size = (n + 2 * quiet) * unit;
    let text_h = 150;
    let mut path = String::new();
    for y in 0..n {
        for x in 0..n {
            if colors[y * n + x] == qrcode::Color::Dark {
                path.push_str(&format!(
                    "M{} {}h{unit}v{unit}h-{unit}z",
                    (x + quiet) * unit,
                    (y + quiet) * unit
                ));
            }
        }
    }
    let mid = size / 2;
    Some(format!(
        concat!(
            r#"<?xml version="1.0" encoding="UTF-8"?>"#,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{s}" height="{h}" viewBox="0 0 {s} {h}" shape-rendering="crispEdges">"#,
            r#"<title>{bay} · {site}</title>"#,
            r##"<rect width="{s}" height="{h}" fill="#fff"/>""##,
            r##"<path fill="#000" d="{path}"/>""##,
            r##"<g font-family="Helvetica, Arial, sans-serif" text-anchor="middle" fill="#000">"##,
            r#"<text x="{mid}" y="{t1}" font-size="44" font-weight="700">{bay}</text>"#,
            r#"<text x="{mid}" y="{t2}" font-size="22">Avvisami quando è carica · Notify me when charged</text>"#,
            r##"<text x="{mid}" y="{t3}" font-size="16" fill="#444">{url}</text>""##,
            "</g></svg>"
        ),
        s = size,
        h = size + text_h,
        bay = escape_html(bay),
        site = escape_html(site_name),
        path = path,
        mid = mid,
        t1 = size + 40,
        t2 = size + 80,
        t3 = size + 115,
        url = escape_html(url),
    ))
}

async fn staff(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if !st.is_staff(&headers) {
        return login_page(StatusCode::UNAUTHORIZED, false);
    }
    page(
        StatusCode::OK,
        "Staff",
        "staff",
        &json!({"page": "staff", "sites": sites_json(&st)}),
        "staff.js",
    )
}

fn login_page(code: StatusCode, failed: bool) -> Response {
    let html = LOGIN_HTML.replace(
        "{{error}}",
        if failed {
            r#"<p class="error" role="alert">Token non valido · Invalid token</p>"#
        } else {
            ""
        },
    );
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// `POST /staff/login` (form `token=…`): sets the `evlounge_staff` cookie that
/// [`AppState::is_staff`] honours. Rate limited per client address like the guest endpoints.
async fn login(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !st.limiter.allow_request(peer, &headers) {
        return (StatusCode::TOO_MANY_REQUESTS, "too many attempts\n").into_response();
    }
    if st.cfg.http.staff_token.is_none() {
        // Nothing to log in with: on this host /staff needs no login, and through a proxy
        // (the only way here) it is refused until a token is set. Say so, instead of
        // setting a cookie and sending the browser back to the login form for ever.
        return (
            StatusCode::FORBIDDEN,
            "No staff token is set (http.staff_token): the staff pages are open only to \
             requests made on the daemon's own host, not through a proxy.\n",
        )
            .into_response();
    }
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    let mut probe = HeaderMap::new();
    let ok = !token.is_empty()
        && HeaderValue::from_str(&format!("Bearer {token}"))
            .map(|v| {
                probe.insert(header::AUTHORIZATION, v);
                st.is_staff(&probe)
            })
            .unwrap_or(false);
    // The cookie must carry the token verbatim; one that cannot be a cookie value fails.
    let cookie_safe = token
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b",;\\\"".contains(&b));
    if !ok || !cookie_safe {
        tracing::info!("staff login refused");
        return login_page(StatusCode::UNAUTHORIZED, true);
    }
    let secure = if st.cfg.http.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!("evlounge_staff={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
    match HeaderValue::from_str(&cookie) {
        Ok(v) => (
            StatusCode::SEE_OTHER,
            [
                (header::SET_COOKIE, v),
                (header::LOCATION, HeaderValue::from_static("/staff")),
            ],
        )
            .into_response(),
        Err(_) => login_page(StatusCode::UNAUTHORIZED, true),
    }
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (
                header::SET_COOKIE,
                "evlounge_staff=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
            (header::LOCATION, "/staff"),
        ],
    )
        .into_response()
}

async fn asset(Path(name): Path<String>) -> Response {
    let (body, ctype) = match name.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "common.js" => (COMMON_JS, "text/javascript; charset=utf-8"),
        "board.js" => (BOARD_JS, "text/javascript; charset=utf-8"),
        "bay.js" => (BAY_JS, "text/javascript; charset=utf-8"),
        "staff.js" => (STAFF_JS, "text/javascript; charset=utf-8"),
        _ => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("hpc-3"));
        assert!(valid_id("A_b-9"));
        assert!(!valid_id(""));
        assert!(!valid_id("../etc"));
        assert!(!valid_id("a b"));
        assert!(!valid_id(&"x".repeat(65)));
    }

    #[test]
    fn script_json_cannot_close_the_script() {
        let s = script_json(&json!({"bay": "</script><script>alert(1)</script>"}));
        assert!(!s.contains('<'));
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back["bay"], "</script><script>alert(1)</script>");
    }

    #[test]
    fn qr_label_escapes_text_and_draws_modules() {
        let svg = qr_svg(
            "https://ev.example.com/bay/milano/hpc-3",
            "Bay <3>",
            "Milano",
        )
        .unwrap();
        assert!(svg.contains("Bay &lt;3&gt;"));
        assert!(svg.matches('M').count() > 100);
    }

    /// Every route registered by an `http` module is documented in the OpenAPI document.
    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert_eq!(
            doc["openapi"].as_str().map(|v| v.starts_with("3.0")),
            Some(true)
        );
        let paths = doc["paths"].as_object().expect("paths");
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let p = entry.unwrap().path();
            if p.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let src = std::fs::read_to_string(&p).unwrap();
            for part in src.split(".route(\"").skip(1) {
                let route = &part[..part.find('"').unwrap()];
                let openapi_path: String = route
                    .split('/')
                    .map(|seg| match seg.strip_prefix(':') {
                        Some(name) => format!("{{{name}}}"),
                        None => seg.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                assert!(
                    paths.contains_key(&openapi_path),
                    "{openapi_path} (from {}) is not in openapi.json",
                    p.display()
                );
                seen += 1;
            }
        }
        assert!(seen >= 20, "found only {seen} routes");
    }
}
