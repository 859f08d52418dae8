//! What the benchmarks that run the release daemon as a child process share: finding the binary,
//! reading the child's memory, the floor's token request, and certificates for HTTPS.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

// Only bench_tenants serves HTTPS; the other benchmarks would warn that it is unused.
#[allow(dead_code)]
pub mod pki;

/// Errors of the benchmark helpers.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The release daemon next to this example: target/release/examples/bench_redis ->
/// target/release/powerbi-tokend.
pub fn daemon_binary() -> Result<PathBuf, BoxError> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("cannot locate the target directory")?;
    let binary = dir.join("powerbi-tokend");
    if !binary.is_file() {
        return Err(format!(
            "{} not found; build the daemon first: cargo build --release",
            binary.display()
        )
        .into());
    }
    // `cargo run --example` rebuilds the library but not the binary: say so when src/ changed
    // after the binary was built.
    let built = std::fs::metadata(&binary).and_then(|m| m.modified())?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    if newest_modification(&src).is_some_and(|newest| newest > built) {
        eprintln!(
            "note: src/ changed after {} was built; run cargo build --release to measure the current code",
            binary.display()
        );
    }
    Ok(binary)
}

/// The latest modification time of a file under `dir`.
fn newest_modification(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let modified = if kind.is_dir() {
            newest_modification(&entry.path())
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(modified);
    }
    newest
}

pub fn read_status_kib(pid: u32, key: &str) -> Result<u64, BoxError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(key))
        .ok_or_else(|| format!("{key} missing from /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .ok_or("malformed status line")?
        .parse()?)
}

/// The simulated tenants' app, the same in every benchmark.
pub const CLIENT_ID: &str = "5d1e7c2a-3b4f-4a6d-8e9f-0a1b2c3d4e5f";
/// Its secret.
pub const SECRET: &str = "bench-secret-value";
/// The Power BI scope the floor asks for, as the daemon does.
pub const SCOPE: &str = "https://analysis.windows.net/powerbi/api/.default";

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: u64,
}

/// The floor's work for tenant `index` (`t<index>.example.com`): one token request to the
/// simulator and its JSON parsed. Returns the json document a sink would store and the lifetime.
pub async fn floor_fetch(
    http: &reqwest::Client,
    authority: &str,
    index: usize,
) -> Result<(String, u64), BoxError> {
    let tenant_id = format!("t{index}.example.com");
    let response: TokenResponse = http
        .post(format!("{authority}/{tenant_id}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", SCOPE),
        ])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    let value = serde_json::json!({
        "access_token": response.access_token,
        "token_type": response.token_type,
        "expires_on": now + response.expires_in,
        "tenant": format!("t{index}"),
        "tenant_id": tenant_id,
        "client_id": CLIENT_ID,
        "scope": SCOPE,
    })
    .to_string();
    Ok((value, response.expires_in))
}
