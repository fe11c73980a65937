//! Cross-site request forgery guard of a coordinator without tokens (`spatiallock run
//! --serve`, a laptop's `spatiallock coordinator`): there, any page the user's browser opens
//! could otherwise POST to the API on loopback (a "simple" cross-origin request needs no CORS
//! preflight, and the API reads JSON whatever the content type). A state-changing request
//! (`POST`, `PUT`, `PATCH`, `DELETE`) whose `Origin` header names another host and port than
//! the `Host` it was sent to is refused with 403 and the API's JSON error naming the origin.
//! Requests without `Origin` (the CLI, curl, workers) pass, and so do reads. An open API on a
//! loopback address also refuses any request whose `Host` is not a loopback name (`localhost`,
//! `127.0.0.0/8`, `[::1]`): a page that rebinds its own DNS name to 127.0.0.1 sends its own name
//! as `Host` (and a matching `Origin`), so this is what stops it reading or writing. With tokens
//! the guard is off: a browser cannot attach the bearer token to a forged request.

use axum::extract::{Request, State};
use axum::http::header::{HOST, ORIGIN};
use axum::http::{HeaderMap, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Whether the guard applies: only when the API is open (no tokens configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsrfGuard {
    /// The coordinator has no tokens: every caller may write.
    pub open_api: bool,
    /// It listens on a loopback address, so every legitimate `Host` is a loopback name.
    pub loopback: bool,
}

/// The middleware: refuses a cross-origin write to an open API (see the module's doc).
pub async fn same_origin_writes(State(guard): State<CsrfGuard>, req: Request, next: Next) -> Response {
    if guard.open_api {
        let host_check = if guard.loopback {
            loopback_host(req.headers())
        } else {
            Ok(())
        };
        if let Err(e) = host_check.and_then(|()| check(req.method(), req.headers(), req.uri())) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Checks that the request's `Host` names a loopback address (a request without `Host`, such
/// as HTTP/2 with only an authority in the URI, is left to [`check`]); 403 naming it otherwise.
fn loopback_host(headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(host) = headers.get(HOST) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(host.as_bytes()).into_owned();
    let name = host_port(&text, Some(0)).and_then(|hp| hp.rsplit_once(':').map(|(h, _)| h.to_string()));
    let is_loopback = name.as_deref().is_some_and(|h| {
        h == "localhost"
            || h.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if is_loopback {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "request refused: Host `{text}` is not a loopback name; this coordinator has no tokens and \
             listens on loopback, so it answers only requests addressed to localhost, 127.0.0.1 or [::1]"
        )))
    }
}

/// Whether `method` changes state.
fn is_write(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE)
}

/// The default port of a URL scheme (`None` when unknown).
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// `host:port` of an authority, lower-cased, with `default` as the port when it has none
/// (IPv6 literals keep their brackets). `None` for an authority that does not parse.
fn host_port(authority: &str, default: Option<u16>) -> Option<String> {
    let authority: axum::http::uri::Authority = authority.trim().parse().ok()?;
    if authority.as_str().contains('@') {
        return None; // user info has no place in Host or Origin
    }
    let port = authority.port_u16().or(default)?;
    Some(format!("{}:{port}", authority.host().to_ascii_lowercase()))
}

/// Checks one request: `Ok` for a read, a write without `Origin`, or a write whose `Origin`
/// names the host and port of its `Host` header (or, with HTTP/2, of the URI's authority);
/// 403 otherwise, naming the origin (`Origin: null`, sent by sandboxed frames and pages that
/// withhold their origin, is refused too).
fn check(method: &Method, headers: &HeaderMap, uri: &Uri) -> Result<(), ApiError> {
    if !is_write(method) {
        return Ok(());
    }
    let Some(origin) = headers.get(ORIGIN) else {
        return Ok(());
    };
    let origin_text = String::from_utf8_lossy(origin.as_bytes()).into_owned();
    let refuse = |why: &str| {
        Err(ApiError::forbidden(format!(
            "cross-origin request refused: Origin `{origin_text}` {why}; this coordinator has no tokens, so \
             it accepts writes only from its own pages or from clients that send no Origin (the CLI, curl)"
        )))
    };
    let parsed = origin_text
        .split_once("://")
        .and_then(|(scheme, rest)| {
            let scheme = scheme.to_ascii_lowercase();
            // An origin is scheme://host[:port], with no path.
            let authority = rest.strip_suffix('/').unwrap_or(rest);
            (!authority.contains('/')).then(|| host_port(authority, default_port(&scheme)).map(|hp| (scheme, hp)))
        })
        .flatten();
    let Some((scheme, origin_host)) = parsed else {
        return refuse("is not an origin of this coordinator's pages");
    };
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()));
    // The request's own scheme is unknown here (TLS may end at a proxy): a Host without a
    // port takes the origin's scheme's default.
    let request_host = host.as_deref().and_then(|h| host_port(h, default_port(&scheme)));
    match request_host {
        Some(h) if h == origin_host => Ok(()),
        Some(h) => refuse(&format!("differs from the host `{h}` the request was sent to")),
        None => refuse("comes with no usable Host header to compare it with"),
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};
    use axum::routing::post;
    use axum::Router;
    use spatiallock_protocol::api::ErrorBody;

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    fn checked(method: Method, pairs: &[(&'static str, &str)]) -> Result<(), ApiError> {
        check(&method, &headers(pairs), &Uri::from_static("/v1/experiments"))
    }

    #[test]
    fn writes_from_another_origin_are_refused_naming_it() {
        for (origin, host) in [
            ("http://evil.example", "127.0.0.1:8080"),
            ("http://127.0.0.1:9999", "127.0.0.1:8080"),
            ("https://127.0.0.1", "127.0.0.1:8080"),     // another port: 443
            ("http://localhost:8080", "127.0.0.1:8080"), // another host name
            ("null", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/path", "127.0.0.1:8080"),
            ("http://user@127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080", "not a host"),
        ] {
            for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                let e = checked(method.clone(), &[("origin", origin), ("host", host)])
                    .expect_err(&format!("{method} from {origin} to {host}"));
                assert_eq!(e.status, StatusCode::FORBIDDEN, "{origin}");
                assert!(e.body.error.contains(&format!("`{origin}`")), "{}", e.body.error);
            }
        }
        let e = checked(Method::POST, &[("origin", "http://evil.example")]).unwrap_err();
        assert!(e.body.error.contains("no usable Host"), "{}", e.body.error);
    }

    #[test]
    fn an_open_loopback_api_answers_only_loopback_hosts() {
        for good in ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:9", "127.1.2.3"] {
            assert!(loopback_host(&headers(&[("host", good)])).is_ok(), "{good}");
        }
        assert!(
            loopback_host(&HeaderMap::new()).is_ok(),
            "no Host is left to the origin check"
        );
        for bad in [
            "evil.test:8080",
            "10.0.0.5:8080",
            "localhost.evil.test",
            "[::2]:80",
            "a@127.0.0.1",
        ] {
            let e = loopback_host(&headers(&[("host", bad)])).unwrap_err();
            assert_eq!(e.status, StatusCode::FORBIDDEN, "{bad}");
            assert!(e.body.error.contains(&format!("`{bad}`")), "{}", e.body.error);
        }
    }

    #[test]
    fn same_origin_writes_reads_and_clients_without_origin_pass() {
        for (origin, host) in [
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://127.0.0.1:8080/", "127.0.0.1:8080"),
            ("HTTP://LOCALHOST:8080", "localhost:8080"),
            ("http://localhost", "localhost:80"),
            ("http://localhost:80", "localhost"),
            ("https://ui.example", "ui.example:443"),
            ("http://[::1]:8080", "[::1]:8080"),
        ] {
            checked(Method::POST, &[("origin", origin), ("host", host)])
                .unwrap_or_else(|e| panic!("{origin} to {host}: {}", e.body.error));
        }
        // The CLI and curl send no Origin; reads are never refused.
        checked(Method::POST, &[("host", "127.0.0.1:8080")]).unwrap();
        checked(Method::DELETE, &[]).unwrap();
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            checked(method, &[("origin", "http://evil.example"), ("host", "127.0.0.1:8080")]).unwrap();
        }
        // HTTP/2 carries the host in the URI's authority.
        check(
            &Method::POST,
            &headers(&[("origin", "http://127.0.0.1:8080")]),
            &Uri::from_static("http://127.0.0.1:8080/v1/experiments"),
        )
        .unwrap();
    }

    /// A router with the layer, as the API mounts it.
    fn app(open_api: bool) -> Router {
        Router::new()
            .route(
                "/v1/experiments",
                post(|| async { "submitted" }).get(|| async { "list" }),
            )
            .layer(axum::middleware::from_fn_with_state(
                CsrfGuard {
                    open_api,
                    loopback: false,
                },
                same_origin_writes,
            ))
    }

    async fn call(app: Router, method: &str, origin: Option<&str>) -> (StatusCode, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let mut request = client.request(method.parse().unwrap(), format!("http://{addr}/v1/experiments"));
        if let Some(origin) = origin {
            request = request.header("origin", origin.replace("{addr}", &addr.to_string()));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        server.abort();
        (StatusCode::from_u16(status.as_u16()).unwrap(), text)
    }

    #[tokio::test]
    async fn the_layer_refuses_a_forged_write_with_the_api_json_error() {
        let (status, body) = call(app(true), "POST", Some("http://evil.example")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        let error: ErrorBody = serde_json::from_str(&body).unwrap();
        assert!(error.error.contains("`http://evil.example`"), "{}", error.error);

        for (method, origin) in [
            ("POST", Some("http://{addr}")),
            ("POST", None),
            ("GET", Some("http://evil.example")),
        ] {
            let (status, body) = call(app(true), method, origin).await;
            assert_eq!(status, StatusCode::OK, "{method} {origin:?}: {body}");
        }
        // With tokens the guard is off (the token is what a forged request lacks).
        let (status, body) = call(app(false), "POST", Some("http://evil.example")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
}
