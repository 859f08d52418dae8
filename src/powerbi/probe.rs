//! The access probe: one cheap authenticated call with the tenant's current token, classified
//! the way an operator acts on it (`answer.rs` has the table). It calls the API the token is
//! for: Power BI's (by default `GET /v1.0/myorg/groups?$top=1`), or Fabric's for a tenant with
//! `resource = "fabric"` (by default `GET /v1/workspaces`). In fleet mode one replica probes a
//! tenant and the others take its outcome (`jobs.rs`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use secrecy::ExposeSecret;

use crate::client::TokenClient;
use crate::config::{ProbeConfig, RestApi};
use crate::error::{Reason, RefreshError};
use crate::token::AccessToken;

use super::answer::{classify, unanswered};
use super::jobs::{self, Turn};

/// Probes once with `token` and returns the outcome and how long it took.
pub async fn run(
    client: &TokenClient,
    api_root: &str,
    probe: &ProbeConfig,
    token: &AccessToken,
) -> (Result<(), RefreshError>, Duration) {
    let url = format!("{api_root}{}", probe.path);
    let started = std::time::Instant::now();
    let answer = client.api_get(&url, token).await;
    let took = started.elapsed();
    let outcome = match answer {
        Ok(answer) => classify(&answer, &[token.secret.expose_secret()]),
        Err(err) => Err(unanswered(&err.message, &[token.secret.expose_secret()])),
    };
    (outcome, took)
}

/// When to probe next after `outcome` at `now`: after the interval, or later if the API asked
/// to wait longer.
pub(crate) fn next_probe(
    now: SystemTime,
    interval: Duration,
    outcome: &Result<(), RefreshError>,
) -> SystemTime {
    let asked = match outcome {
        Err(failure) => failure
            .retry_after
            .map_or(Duration::ZERO, |after| after.get()),
        Ok(()) => Duration::ZERO,
    };
    crate::schedule::later(now, interval.max(asked))
}

/// Records a probe's outcome at `now` in the tenant's status, made by replica `by` (fleet mode)
/// and `adopted` from it or not; returns the reason of the probe before, if it failed.
fn record(
    status: &mut crate::status::TenantStatus,
    api: RestApi,
    now: SystemTime,
    outcome: &Result<(), RefreshError>,
    by: Option<Arc<str>>,
    adopted: bool,
) -> Option<Reason> {
    let probe_status = status.api_probe.get_or_insert_with(|| {
        Box::new(crate::status::ProbeStatus {
            api,
            last: now,
            failure: None,
            failures_by_reason: [0; Reason::ALL.len()],
            probed_by: None,
            adopted: false,
        })
    });
    let previous = probe_status.failure.as_ref().map(|failure| failure.reason);
    probe_status.api = api;
    probe_status.last = now;
    if let Err(failure) = outcome {
        let count = &mut probe_status.failures_by_reason[failure.reason.index()];
        *count = count.saturating_add(1);
    }
    probe_status.failure = outcome.as_ref().err().cloned();
    probe_status.probed_by = by;
    probe_status.adopted = adopted;
    previous
}

/// One log line per change of the probe's outcome (a repeat is at DEBUG); `next`: when the
/// next probe comes; `by`: in fleet mode, the replica that probed.
fn log(
    tenant: &str,
    api: RestApi,
    outcome: &Result<(), RefreshError>,
    previous: Option<Reason>,
    next: SystemTime,
    by: Option<&str>,
) {
    let next = crate::clock::display_time(next);
    let (name, title) = (api.as_str(), api.title());
    let probed_by = by.unwrap_or("-");
    match outcome {
        Ok(()) if previous.is_some() => {
            tracing::info!(
                tenant,
                api = name,
                probed_by,
                "{title} accepts the tenant's token again"
            );
        }
        Ok(()) => tracing::debug!(tenant, api = name, probed_by, "{title} access probe passed"),
        Err(failure) if previous == Some(failure.reason) => tracing::debug!(
            tenant,
            api = name,
            probed_by,
            reason = failure.reason.as_str(),
            request_id = failure.trace_id.as_deref().unwrap_or("-"),
            next_probe = %next,
            "{title} access probe still failing"
        ),
        Err(failure) => tracing::warn!(
            tenant,
            api = name,
            probed_by,
            reason = failure.reason.as_str(),
            status = failure.status.unwrap_or(0),
            code = failure.oauth_error.as_deref().unwrap_or("-"),
            request_id = failure.trace_id.as_deref().unwrap_or("-"),
            error = %failure.message,
            next_probe = %next,
            "{title} access probe failed ({}): {}",
            failure.reason.as_str(),
            failure.reason.advice().unwrap_or_default()
        ),
    }
}

/// Probes with `token`, the tenant's access token, if it is still valid, through the request
/// limiter and rate cap, and records and logs the outcome; in fleet mode, adopts the outcome of
/// another replica's probe instead when there is a fresh one (`jobs.rs`). Returns when to probe
/// next (`None`: with the next access token) and whether the API said the token has expired;
/// `None` when `cancel` fired while it waited for its turn.
pub async fn check(
    context: &super::Context<'_>,
    token: &AccessToken,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<(Option<SystemTime>, bool)> {
    let Some(powerbi) = context.config.powerbi.as_deref() else {
        return Some((None, false));
    };
    let Some(settings) = &powerbi.probe else {
        return Some((None, false));
    };
    if token.expires_on() <= crate::clock::unix_now() {
        // An expired token proves nothing about access; the refresh due anyway plans the next
        // probe.
        return Some((None, false));
    }
    let job = jobs::ProbeJob::new(context.config, settings, token);
    let leased = match jobs::turn(context, &job).await {
        Turn::Make { leased } => leased,
        Turn::Adopt { output, by } => return Some(settle(context, &output, Some(by), None)),
        Turn::Later(at) => return Some((Some(at), false)),
    };
    let Some(permit) = context.shared.api_turn(cancel).await else {
        jobs::done(context, &job, None, leased).await;
        return None;
    };
    let (outcome, took) = run(&context.shared.client, &powerbi.api_root, settings, token).await;
    drop(permit);
    let now = SystemTime::now();
    let made = job.made(now, next_probe(now, settings.interval, &outcome), outcome);
    let planned = settle(context, &made, jobs::made_here(context), Some(took));
    jobs::done(context, &job, Some(&made), leased).await;
    Some(planned)
}

/// Records, counts and logs a probe's outcome, run here (`took`: how long) or adopted from the
/// replica `by`; returns when to probe next and whether Power BI said the token has expired.
fn settle(
    context: &super::Context<'_>,
    made: &jobs::ProbeOutcome,
    by: Option<Arc<str>>,
    took: Option<Duration>,
) -> (Option<SystemTime>, bool) {
    let outcome = &made.outcome;
    let adopted = context.shared.adopted(by.as_deref());
    if let Some(observer) = &context.shared.observer {
        observer.probe_finished(outcome.as_ref().map(|_| ()).map_err(|e| e.reason), took);
        if context.shared.fleet.is_some() {
            observer.fleet_job(crate::fleet::Kind::Probe, adopted);
        }
    }
    let api = context
        .config
        .powerbi
        .as_deref()
        .map_or(RestApi::default(), |powerbi| powerbi.api);
    let previous = record(
        &mut crate::status::lock(context.status),
        api,
        made.probed_at,
        outcome,
        by.clone(),
        adopted,
    );
    log(
        &context.config.name,
        api,
        outcome,
        previous,
        made.next_at,
        by.as_deref(),
    );
    let expired = matches!(outcome, Err(failure) if failure.reason == Reason::TokenExpired);
    (Some(made.next_at), expired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ApiAnswer;
    use crate::token::RetryAfter;

    fn answer(status: u16, body: &str) -> ApiAnswer {
        ApiAnswer {
            status,
            request_id: Some("6f1b9d8e-0000-4000-8000-000000000001".to_owned()),
            error_info: None,
            retry_after: None,
            www_authenticate: None,
            body: body.as_bytes().to_vec(),
        }
    }

    const NOT_AUTHORIZED: &str = r#"{"error":{"code":"PowerBINotAuthorizedException","pbi.error":{"code":"PowerBINotAuthorizedException","parameters":{},"details":[],"exceptionCulprit":1}}}"#;

    #[test]
    fn every_answer_of_the_table_gets_its_reason() {
        assert!(classify(&answer(200, r#"{"value":[]}"#), &[]).is_ok());
        let cases = [
            (401, NOT_AUTHORIZED, Reason::NotAuthorized),
            (401, "", Reason::NotAuthorized),
            (
                403,
                r#"{"error":{"code":"TokenExpired","message":"Access token has expired, resubmit with a new access token"}}"#,
                Reason::TokenExpired,
            ),
            (
                403,
                r#"{"error":{"code":"Forbidden"}}"#,
                Reason::NotAuthorized,
            ),
            (404, "", Reason::NotFound),
            (429, "", Reason::Throttled),
            (500, "<html>oops</html>", Reason::ServerError),
            (503, "", Reason::ServerError),
            (400, "{}", Reason::Unexpected),
            (302, "", Reason::Unexpected),
        ];
        for (status, body, reason) in cases {
            let failure = classify(&answer(status, body), &[]).expect_err("a failure");
            assert_eq!(failure.reason, reason, "HTTP {status} {body}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(
                failure.trace_id.as_deref(),
                Some("6f1b9d8e-0000-4000-8000-000000000001")
            );
        }
        let failure = classify(&answer(401, NOT_AUTHORIZED), &[]).expect_err("denied");
        assert_eq!(
            failure.oauth_error.as_deref(),
            Some("PowerBINotAuthorizedException")
        );
        assert_eq!(failure.class, crate::error::ErrorClass::Permanent);
    }

    #[test]
    fn an_echoed_token_never_reaches_the_message() {
        let token = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let body = format!(r#"{{"error":{{"code":"{token}","message":"bad token {token}"}}}}"#);
        let failure = classify(&answer(401, &body), &[token]).expect_err("denied");
        let shown = format!("{failure:?}");
        assert!(!shown.contains(token), "{shown}");
    }

    #[test]
    fn retry_after_is_honoured_and_the_interval_is_the_floor() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let interval = Duration::from_secs(60);
        assert_eq!(next_probe(now, interval, &Ok(())), now + interval);
        let mut throttled = answer(429, "");
        throttled.retry_after = Some(RetryAfter::capped(Duration::from_secs(600)));
        let failure = classify(&throttled, &[]);
        assert_eq!(
            next_probe(now, interval, &failure),
            now + Duration::from_secs(600)
        );
        throttled.retry_after = Some(RetryAfter::capped(Duration::from_secs(5)));
        let failure = classify(&throttled, &[]);
        assert_eq!(next_probe(now, interval, &failure), now + interval);
    }

    /// A Fabric error body, as its `ErrorResponse` is documented.
    fn fabric(code: &str, message: &str) -> String {
        format!(
            r#"{{"requestId":"8f49a868-987f-4716-80fd-600edd835419","errorCode":"{code}","message":"{message}"}}"#
        )
    }

    #[test]
    fn fabric_answers_get_the_same_reasons_with_fabrics_code_message_and_request_id() {
        assert!(classify(&answer(200, r#"{"value":[]}"#), &[]).is_ok());
        let cases = [
            (
                401,
                "InvalidToken",
                "Access token is invalid",
                Reason::NotAuthorized,
            ),
            (
                401,
                "Unauthorized",
                "The caller is not authorized",
                Reason::NotAuthorized,
            ),
            (
                401,
                "TokenExpired",
                "Access token has expired",
                Reason::TokenExpired,
            ),
            (
                403,
                "InsufficientPrivileges",
                "The caller does not have sufficient permissions to access the requested resource",
                Reason::NotAuthorized,
            ),
            (
                404,
                "EntityNotFound",
                "The entity could not be found",
                Reason::NotFound,
            ),
            (
                429,
                "RequestBlocked",
                "Request is blocked by the upstream service until: 2/6/2024 12:58:37 PM",
                Reason::Throttled,
            ),
            (
                500,
                "UnknownError",
                "An error occurred",
                Reason::ServerError,
            ),
            (
                400,
                "InvalidParameter",
                "Invalid workspace role",
                Reason::Unexpected,
            ),
        ];
        for (status, code, message, reason) in cases {
            let failure =
                classify(&answer(status, &fabric(code, message)), &[]).expect_err("a failure");
            assert_eq!(failure.reason, reason, "HTTP {status} {code}");
            assert_eq!(failure.status, Some(status));
            assert_eq!(failure.oauth_error.as_deref(), Some(code));
            assert_eq!(failure.message, format!("HTTP {status}: {message}"));
            // The header's id, which Fabric repeats in the body.
            assert_eq!(
                failure.trace_id.as_deref(),
                Some("6f1b9d8e-0000-4000-8000-000000000001")
            );
        }

        // Without the header, the body's request id; a body id that is no id is not shown.
        let mut headerless = answer(401, &fabric("InvalidToken", "Access token is invalid"));
        headerless.request_id = None;
        let failure = classify(&headerless, &[]).expect_err("denied");
        assert_eq!(
            failure.trace_id.as_deref(),
            Some("8f49a868-987f-4716-80fd-600edd835419")
        );
        headerless.body = br#"{"requestId":"<script>","errorCode":"InvalidToken"}"#.to_vec();
        assert_eq!(
            classify(&headerless, &[]).expect_err("denied").trace_id,
            None
        );

        // Without a body, the code from Fabric's x-ms-public-api-error-code header.
        let mut bare = answer(401, "");
        bare.error_info = Some("TokenExpired".to_owned());
        assert_eq!(
            classify(&bare, &[]).expect_err("expired").reason,
            Reason::TokenExpired
        );

        // An echoed token is cut from a Fabric message and code too.
        let token = "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        let echoed = fabric(token, &format!("bad token {token}"));
        let shown = format!(
            "{:?}",
            classify(&answer(401, &echoed), &[token]).expect_err("denied")
        );
        assert!(!shown.contains(token), "{shown}");
    }
}
