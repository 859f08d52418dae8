//! The answers of injected [`Behavior`](super::Behavior)s that are not the outcome of Entra's
//! validation: throttling with `Retry-After`, 5xx with HTML or JSON bodies, an intercepting
//! proxy's login page, truncated and oversized bodies, an exact raw answer, and the answer to a
//! request still waiting when the simulator stops. Catalogue errors ([`Behavior::Aadsts`](super::Behavior::Aadsts))
//! are answered by the token endpoint with its usual error reply.

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::RetryAfter;
use super::catalogue::catalogue;
use super::token_request::{Incoming, Reply, catalogue_reply, error_reply};
use super::wire::json_headers;

/// [`Behavior::Throttle`](super::Behavior::Throttle): HTTP 429 with `Retry-After` and a
/// plain-text or JSON body.
pub(super) fn throttle_reply(
    incoming: &Incoming,
    retry_after: &RetryAfter,
    plain_text: bool,
) -> Reply {
    let value = match retry_after {
        RetryAfter::Seconds(seconds) => seconds.to_string(),
        RetryAfter::HttpDate(when) => httpdate::fmt_http_date(*when),
    };
    let mut reply = if plain_text {
        let headers = [(header::CONTENT_TYPE, "text/plain")];
        Reply::from((StatusCode::TOO_MANY_REQUESTS, headers, "Too Many Requests").into_response())
    } else {
        catalogue_reply(incoming, 90055)
    };
    // Both forms are plain ASCII (digits, or an IMF-fixdate), always valid header values.
    if let Ok(value) = HeaderValue::from_str(&value) {
        reply
            .response
            .headers_mut()
            .insert(header::RETRY_AFTER, value);
    }
    reply
}

/// [`Behavior::ServerError`](super::Behavior::ServerError): a 5xx without `Retry-After`, with
/// an HTML page or an Entra error body.
pub(super) fn server_error_reply(incoming: &Incoming, status: u16, json: bool) -> Reply {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if json {
        let code = if status == StatusCode::SERVICE_UNAVAILABLE {
            50033
        } else {
            50000
        };
        let (_, error, text) = catalogue(code);
        return error_reply(
            incoming,
            status,
            error,
            code,
            text,
            &incoming.placeholders(),
        );
    }
    let reason = status.canonical_reason().unwrap_or("Server Error");
    let page = format!(
        "<!DOCTYPE html>\r\n<html><head><title>{reason}</title></head>\r\n<body><h2>{reason}</h2>\
         <hr><p>HTTP Error {code}. The service is unavailable.</p></body></html>\r\n",
        code = status.as_u16()
    );
    let headers = [(header::CONTENT_TYPE, "text/html; charset=us-ascii")];
    (status, headers, page).into_response().into()
}

/// What a client sees when an intercepting proxy answers instead of Entra.
pub(super) fn proxy_login_page() -> Response {
    const PAGE: &str = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
        <title>Sign in - Corporate Web Gateway</title></head>\n<body><form method=\"post\" \
        action=\"/gateway/login\"><h1>Please sign in to continue</h1><p>Access to external \
        sites requires authentication.</p><label>User name <input name=\"user\"></label>\
        <label>Password <input name=\"password\" type=\"password\"></label>\
        <button type=\"submit\">Sign in</button></form></body></html>\n";
    let headers = [(header::CONTENT_TYPE, "text/html; charset=utf-8")];
    (StatusCode::OK, headers, PAGE).into_response()
}

/// A success body cut off in the middle of the `access_token` string.
pub(super) fn truncated_response() -> Response {
    let mut body = format!(
        r#"{{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"{}"}}"#,
        "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9".repeat(8)
    );
    body.truncate(body.len() / 2);
    (StatusCode::OK, json_headers(), body).into_response()
}

/// A token response of exactly `size` bytes.
pub(super) fn oversized_response(size: usize) -> Response {
    const HEAD: &[u8] =
        br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":""#;
    const TAIL: &[u8] = br#""}"#;
    let mut body = Vec::with_capacity(size);
    if size >= HEAD.len() + TAIL.len() {
        body.extend_from_slice(HEAD);
        body.resize(size - TAIL.len(), b'A');
        body.extend_from_slice(TAIL);
    } else {
        body.resize(size, b' ');
    }
    (StatusCode::OK, json_headers(), Body::from(body)).into_response()
}

/// [`Behavior::Raw`](super::Behavior::Raw): exactly the status, headers and body the test asked
/// for. Nothing is added, so a test controls every byte a client parses.
pub(super) fn raw_response(status: u16, headers: &[(String, String)], body: &[u8]) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Body::from(body.to_vec())).into_response();
    let map = response.headers_mut();
    // axum adds no header for a plain `Body`; clear anyway so "exactly this" stays true if
    // that ever changes.
    map.clear();
    for (name, value) in headers {
        // An invalid name or value cannot be put on the wire; leaving it out is what a test
        // can observe, where a panic would only kill the simulator's connection task.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.append(name, value);
        }
    }
    response
}

/// Sent to a request still waiting when the simulator is dropped.
pub(super) fn stopped_response() -> Response {
    let headers = [
        (header::CONTENT_TYPE, "text/plain"),
        (header::CONNECTION, "close"),
    ];
    (
        StatusCode::SERVICE_UNAVAILABLE,
        headers,
        "simulated Entra ID stopped",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::super::wire::JSON_CONTENT_TYPE;
    use super::super::{Behavior, RetryAfter};
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[tokio::test]
    async fn aadsts_behavior_answers_from_the_catalogue() {
        let Fixture { sim, http } = fixture().await;
        for code in [
            7000215, 7000222, 700016, 90002, 900023, 500011, 7000218, 70011, 1002012, 901002,
            50033, 90055,
        ] {
            sim.set_behavior(TENANT, Behavior::Aadsts(code));
            let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
            let (status, error, _) = catalogue(code);
            assert_entra_error(&answer, status.as_u16(), error, code);
        }
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn throttle_with_seconds_and_json_body() {
        let Fixture { sim, http } = fixture().await;
        sim.set_behavior(
            TENANT,
            Behavior::Throttle {
                retry_after: RetryAfter::Seconds(60),
                plain_text: false,
            },
        );
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.header("retry-after"), Some("60"));
        assert_entra_error(&answer, 429, "temporarily_unavailable", 90055);
    }

    #[tokio::test]
    async fn throttle_with_http_date_and_plain_text_body() {
        let Fixture { sim, http } = fixture().await;
        let when = UNIX_EPOCH + Duration::from_secs(1_767_225_660);
        sim.set_behavior(
            TENANT,
            Behavior::Throttle {
                retry_after: RetryAfter::HttpDate(when),
                plain_text: true,
            },
        );
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 429);
        assert_eq!(
            answer.header("retry-after"),
            Some("Thu, 01 Jan 2026 00:01:00 GMT")
        );
        assert_eq!(answer.header("content-type"), Some("text/plain"));
        assert_eq!(answer.body, "Too Many Requests");
    }

    #[tokio::test]
    async fn server_errors_carry_no_retry_after() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.push_script(
            TENANT,
            [
                Behavior::ServerError {
                    status: 502,
                    json: false,
                },
                Behavior::ServerError {
                    status: 500,
                    json: true,
                },
                Behavior::ServerError {
                    status: 503,
                    json: true,
                },
                Behavior::TemporarilyUnavailable,
            ],
        );
        let html = post(&http, &url, &v2_form()).await;
        assert_eq!(html.status, 502);
        assert!(
            html.header("content-type")
                .is_some_and(|value| value.starts_with("text/html"))
        );
        assert!(html.body.contains("Bad Gateway"));
        assert!(html.header("retry-after").is_none());

        let json = post(&http, &url, &v2_form()).await;
        assert_entra_error(&json, 500, "server_error", 50000);
        assert!(json.header("retry-after").is_none());

        let unavailable = post(&http, &url, &v2_form()).await;
        assert_entra_error(&unavailable, 503, "temporarily_unavailable", 50033);

        let temporarily = post(&http, &url, &v2_form()).await;
        assert_entra_error(&temporarily, 503, "temporarily_unavailable", 50033);
        assert!(temporarily.header("retry-after").is_none());
    }

    #[tokio::test]
    async fn malformed_success_bodies() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        sim.push_script(
            TENANT,
            [
                Behavior::Html,
                Behavior::Truncated,
                Behavior::Oversized(200_000),
                Behavior::Oversized(10),
            ],
        );

        let html = post(&http, &url, &v2_form()).await;
        assert_eq!(html.status, 200);
        assert!(
            html.header("content-type")
                .is_some_and(|value| value.starts_with("text/html"))
        );
        assert!(serde_json::from_str::<serde_json::Value>(&html.body).is_err());

        let truncated = post(&http, &url, &v2_form()).await;
        assert_eq!(truncated.status, 200);
        assert_eq!(truncated.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert!(truncated.body.starts_with(r#"{"token_type":"Bearer""#));
        assert!(serde_json::from_str::<serde_json::Value>(&truncated.body).is_err());

        let oversized = post(&http, &url, &v2_form()).await;
        assert_eq!(oversized.status, 200);
        assert_eq!(oversized.body.len(), 200_000);
        assert!(oversized.json()["access_token"].is_string());

        let tiny = post(&http, &url, &v2_form()).await;
        assert_eq!(tiny.body.len(), 10);
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn slow_answers_after_the_delay() {
        let Fixture { sim, http } = fixture().await;
        sim.push_script(TENANT, [Behavior::Slow(Duration::from_millis(80))]);
        let started = std::time::Instant::now();
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_eq!(answer.status, 200);
        assert!(started.elapsed() >= Duration::from_millis(80));
    }

    #[tokio::test]
    async fn raw_answers_exactly_the_given_status_headers_and_body() {
        let Fixture { sim, http } = fixture().await;
        let body = br#"{"access_token":"x","expires_in":1000000000000}"#.to_vec();
        sim.push_script(
            TENANT,
            [
                Behavior::Raw {
                    status: 429,
                    headers: vec![
                        ("Retry-After".to_owned(), "18446744073709551615".to_owned()),
                        ("X-Repeated".to_owned(), "one".to_owned()),
                        ("X-Repeated".to_owned(), "two".to_owned()),
                        ("Bad Name".to_owned(), "dropped".to_owned()),
                    ],
                    body: b"slow down".to_vec(),
                },
                Behavior::Raw {
                    status: 200,
                    headers: vec![("Content-Type".to_owned(), "application/json".to_owned())],
                    body: body.clone(),
                },
                Behavior::Raw {
                    status: 1000,
                    headers: Vec::new(),
                    body: Vec::new(),
                },
            ],
        );
        // Whatever the credentials: a raw answer skips Entra's validation.
        let url = v2_url(&sim, TENANT);
        let throttled = post(&http, &url, &with(v2_form(), "client_secret", "wrong")).await;
        assert_eq!(throttled.status, 429);
        assert_eq!(
            throttled.header("retry-after"),
            Some("18446744073709551615")
        );
        assert_eq!(throttled.body, "slow down");
        assert_eq!(throttled.header("content-type"), None);
        assert!(
            !throttled
                .headers
                .keys()
                .any(|name| name.as_str().contains(' '))
        );
        let repeated: Vec<&str> = throttled
            .headers
            .get_all("x-repeated")
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert_eq!(repeated, ["one", "two"]);

        let absurd = post(&http, &url, &v2_form()).await;
        assert_eq!(absurd.status, 200);
        assert_eq!(absurd.header("content-type"), Some("application/json"));
        assert_eq!(absurd.body.as_bytes(), body.as_slice());

        let invalid = post(&http, &url, &v2_form()).await;
        assert_eq!(invalid.status, 500);
        assert!(invalid.body.is_empty());
        assert_eq!(sim.request_count(TENANT), 3);
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn hang_never_answers() {
        let Fixture { sim, http } = fixture().await;
        sim.set_behavior(TENANT, Behavior::Hang);
        let result = http
            .post(v2_url(&sim, TENANT))
            .timeout(Duration::from_millis(100))
            .form(&v2_form())
            .send()
            .await;
        assert!(result.is_err_and(|error| error.is_timeout()));
        assert_eq!(sim.request_count(TENANT), 1);
    }
}
