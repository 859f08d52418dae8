//! A tenant's use of the Power BI REST API: where the API is (`powerbi_api`, else the cloud's
//! root) and the access probe (`probe`). Both may be set in `[defaults]`; a tenant's own value
//! replaces the default whole (`probe = false` turns an inherited probe off).

use std::time::Duration;

use super::loader::Loader;
use super::tenant::{TenantInput, inherited};
use super::types::{PowerBiConfig, ProbeConfig};
use super::values::check_authority_host;
use crate::cloud::Cloud;

/// The shortest probe interval: below it the probe would be a load test.
const PROBE_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// The longest: a day without knowing whether Power BI still accepts the tokens is the most an
/// alert that waits half an hour can be helped by.
const PROBE_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);

/// A path longer than this is not a Power BI API call.
const PROBE_PATH_MAX: usize = 512;

impl Loader<'_> {
    /// The tenant's Power BI settings: `Some(None)` when it uses none, `None` after a problem.
    pub(super) fn powerbi(
        &mut self,
        input: &TenantInput<'_>,
        cloud: Cloud,
        resource: Option<&str>,
    ) -> Option<Option<PowerBiConfig>> {
        let api_root = self.powerbi_api(input, cloud);
        let probe = self.probe(input, resource);
        let probe = probe?;
        let api_root = api_root?;
        if probe.is_none() {
            return Some(None);
        }
        Some(Some(PowerBiConfig {
            api_root: self.shared(api_root),
            probe,
        }))
    }

    /// `powerbi_api`: the REST API root, under the same https-except-loopback rule as
    /// `authority_host` (the token is a credential too).
    fn powerbi_api(&mut self, input: &TenantInput<'_>, cloud: Cloud) -> Option<String> {
        let Some(raw) = inherited!(input, powerbi_api) else {
            return Some(cloud.power_bi_api().to_owned());
        };
        match check_authority_host(raw.get_ref()) {
            Ok(root) => Some(root),
            Err(message) => {
                let message = message.replace(
                    "https://login.microsoftonline.com",
                    "https://api.powerbi.com",
                );
                self.problem(Some(raw.span().start), input.key("powerbi_api"), message);
                None
            }
        }
    }

    /// `probe`: `true`, `false`, or `{ interval = "15m", path = "/v1.0/…" }`.
    fn probe(
        &mut self,
        input: &TenantInput<'_>,
        resource: Option<&str>,
    ) -> Option<Option<ProbeConfig>> {
        let Some(raw) = inherited!(input, probe) else {
            return Some(None);
        };
        let at = Some(raw.span().start);
        let key = input.key("probe");
        let expected =
            "expected true, false or { interval = \"15m\", path = \"/v1.0/myorg/groups?$top=1\" }";
        let mut probe = ProbeConfig {
            interval: ProbeConfig::DEFAULT_INTERVAL,
            path: ProbeConfig::DEFAULT_PATH.to_owned(),
        };
        match raw.get_ref() {
            toml::Value::Boolean(false) => return Some(None),
            toml::Value::Boolean(true) => {}
            toml::Value::Table(table) => {
                let mut ok = true;
                for (name, value) in table {
                    match (name.as_str(), value) {
                        ("interval", toml::Value::String(text)) => {
                            match humantime::parse_duration(text) {
                                Ok(interval)
                                    if (PROBE_INTERVAL_MIN..=PROBE_INTERVAL_MAX)
                                        .contains(&interval) =>
                                {
                                    probe.interval = interval;
                                }
                                _ => {
                                    self.problem(
                                        at,
                                        format!("{key}.interval"),
                                        format!(
                                            "expected a duration between 1s and 24h such as \"15m\", got {text:?}"
                                        ),
                                    );
                                    ok = false;
                                }
                            }
                        }
                        ("path", toml::Value::String(path)) => match check_probe_path(path) {
                            Ok(()) => probe.path.clone_from(path),
                            Err(message) => {
                                self.problem(at, format!("{key}.path"), message);
                                ok = false;
                            }
                        },
                        ("interval" | "path", other) => {
                            self.problem(
                                at,
                                format!("{key}.{name}"),
                                format!("expected a string, got a {}", other.type_str()),
                            );
                            ok = false;
                        }
                        (other, _) => {
                            self.problem(
                                at,
                                format!("{key}.{other}"),
                                format!("unknown key {other:?}; {expected}"),
                            );
                            ok = false;
                        }
                    }
                }
                if !ok {
                    return None;
                }
            }
            other => {
                self.problem(at, key, format!("{expected}, got a {}", other.type_str()));
                return None;
            }
        }
        // A token for another resource would be refused by Power BI whatever the tenant's
        // settings: the probe would only ever report a configuration mistake of ours.
        if let Some(resource) = resource
            && !Cloud::ALL
                .iter()
                .any(|cloud| cloud.power_bi_resource() == resource.trim_end_matches('/'))
        {
            self.problem(
                at,
                key,
                format!(
                    "the probe calls the Power BI API, but this tenant's token is for {resource:?}; remove probe or the resource override"
                ),
            );
            return None;
        }
        Some(Some(probe))
    }
}

/// A path and query under the API root: starts with `/`, printable ASCII, no scheme or host.
fn check_probe_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') || path.starts_with("//") {
        return Err(format!(
            "expected a path under the API root such as \"/v1.0/myorg/groups?$top=1\", got {path:?}"
        ));
    }
    if path.len() > PROBE_PATH_MAX {
        return Err(format!(
            "is {} bytes long; expected at most {PROBE_PATH_MAX}",
            path.len()
        ));
    }
    if !path.bytes().all(|b| b.is_ascii_graphic()) || path.contains('#') {
        return Err(format!(
            "expected printable ASCII without spaces or '#' (percent-encode them), got {path:?}"
        ));
    }
    Ok(())
}
