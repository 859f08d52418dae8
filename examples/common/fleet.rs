//! The synthetic fleet that the in-process benchmarks (`bench_metrics`, `bench_page`) render.

use std::time::{Duration, SystemTime};

use powerbi_tokend::credential::CredentialExpiry;
use powerbi_tokend::error::{ErrorClass, Reason, RefreshError};
use powerbi_tokend::schedule::system_to_unix_f64;
use powerbi_tokend::status::{self, Registry};

/// Errors of the benchmarks.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The command line `[TENANTS] [OUT_PATH]`: the fleet's size (`default` without one) and where
/// to write what was rendered, if anywhere.
pub fn arguments(default: usize) -> Result<(usize, Option<std::path::PathBuf>), BoxError> {
    let mut args = std::env::args().skip(1);
    let tenants = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(default);
    Ok((tenants, args.next().map(std::path::PathBuf::from)))
}

/// A synthetic fleet of `tenants` tenants named `tenant000001`…, as a long-running fleet looks:
/// every tenant healthy with a token of 30–60 minutes left, ten successful refreshes and a
/// certificate a year from expiry, except every 100th, which is misconfigured (three failures,
/// token still valid), and every 200th, whose client secret expires in 20 days.
pub fn fleet(tenants: usize) -> Registry {
    let now = SystemTime::now();
    let now_unix = system_to_unix_f64(now) as i64;
    let registry = Registry::new();
    for i in 1..=tenants {
        let handle = registry.insert(&format!("tenant{i:06}"));
        let mut status = status::lock(&handle);
        let left = 1800 + (i as i64 * 7919) % 1800;
        status.first_attempt_done = true;
        status.token.expires_on = Some(now_unix + left);
        status.token.next_refresh = Some(now + Duration::from_secs(left as u64 / 2));
        status.token.last_success = Some(now - Duration::from_secs(600));
        status.token.successes = 10;
        status.credential_expiry = Some(CredentialExpiry::certificate(now_unix + 365 * 86_400));
        if i % 200 == 0 {
            status.credential_expiry =
                Some(CredentialExpiry::client_secret(now_unix + 20 * 86_400));
        }
        if i % 100 == 0 {
            status.token.consecutive_failures = 3;
            status.token.failures = 3;
            status.token.failures_by_reason[Reason::InvalidClient.index()] = 3;
            status.token.last_error = Some(Box::new(RefreshError::local(
                ErrorClass::Permanent,
                Reason::InvalidClient,
                "AADSTS7000215: Invalid client secret provided.",
            )));
        }
    }
    registry
}
