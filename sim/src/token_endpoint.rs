//! The v1 and v2 token endpoints and the discovery document: the tenant's injected behaviour or
//! Entra's checks in Entra's order (tenant, grant and client, credential, resource). The request
//! and the answers' shapes are in `token_request.rs`; certificate and federated credentials are
//! checked in `assertion.rs` and `federated.rs`; a successful answer is built in
//! `access_token.rs`, an injected fault's in `faults.rs`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::access_token::success_response;
use super::assertion::{JWT_BEARER_ASSERTION_TYPE, SimAssertion, verify_assertion};
use super::catalogue::{catalogue, error_body};
use super::cloud::SimCloud;
use super::faults::{
    oversized_response, proxy_login_page, raw_response, server_error_reply, stopped_response,
    throttle_reply, truncated_response,
};
use super::token_request::{Grant, Incoming, Rejection, Reply, catalogue_reply, tenant_segment};
use super::wire::{client_key, is_dns_like, is_guid, json_headers, tenant_key, unix_now};
use super::{ApiVersion, AppCredentials, Behavior, Shared, SimApp, SimTenant};

pub(super) async fn token_v2(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    token_endpoint(shared, ApiVersion::V2, request).await
}

pub(super) async fn token_v1(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    token_endpoint(shared, ApiVersion::V1, request).await
}

/// What [`Shared::admit`] decided about a token request.
struct Admission {
    /// The script's next entry, else the persistent behaviour.
    behavior: Behavior,
    /// The tenant's configuration, taken out of the lock; `None` for an unknown tenant.
    tenant: Option<Arc<SimTenant>>,
    /// The calling app's certificates and federated credentials; looked up only for requests
    /// that carry a `client_assertion`.
    credentials: Option<Arc<AppCredentials>>,
}

/// The token endpoints' side of [`Shared`]: each method is one short critical section.
impl Shared {
    /// Counts and records a request and decides how to answer it, in one critical section.
    fn admit(&self, incoming: &Incoming) -> Admission {
        self.total_requests.fetch_add(1, Ordering::Relaxed);
        let recorded = incoming.recorded();
        let credentials_key = incoming
            .param("client_assertion")
            .and(incoming.client_id())
            .map(client_key);
        let mut registry = self.registry();
        let entry = registry.entry(incoming.tenant_key.clone()).or_default();
        entry.requests += 1;
        entry.last_request = Some(recorded);
        let behavior = entry
            .script
            .pop_front()
            .unwrap_or_else(|| entry.behavior.clone());
        Admission {
            behavior,
            tenant: entry.tenant.clone(),
            credentials: credentials_key.and_then(|key| entry.credentials.get(&key).cloned()),
        }
    }

    fn record_assertion(&self, key: &str, assertion: SimAssertion) {
        if let Some(entry) = self.registry().get_mut(key) {
            entry.last_assertion = Some(assertion);
        }
    }

    fn tenant(&self, key: &str) -> Option<Arc<SimTenant>> {
        self.registry()
            .get(key)
            .and_then(|entry| entry.tenant.clone())
    }

    fn count_issued(&self, key: &str) {
        if let Some(entry) = self.registry().get_mut(key) {
            entry.issued += 1;
        }
    }

    async fn until_shutdown(&self) {
        let mut stopped = self.shutdown.clone();
        // An error means the sender is gone, which is a shutdown too.
        let _ = stopped.wait_for(|&stopped| stopped).await;
    }
}

async fn token_endpoint(shared: Arc<Shared>, version: ApiVersion, request: Request) -> Response {
    let incoming = Incoming::read(version, request).await;
    let admission = shared.admit(&incoming);
    let behavior = &admission.behavior;
    let reply = match behavior {
        Behavior::Normal => answer_normally(&shared, &incoming, &admission),
        Behavior::Slow(delay) => {
            tokio::select! {
                () = tokio::time::sleep(*delay) => {
                    answer_normally(&shared, &incoming, &admission)
                }
                () = shared.until_shutdown() => stopped_response().into(),
            }
        }
        Behavior::Hang => {
            shared.until_shutdown().await;
            stopped_response().into()
        }
        Behavior::Aadsts(code) => catalogue_reply(&incoming, *code),
        Behavior::TemporarilyUnavailable => catalogue_reply(&incoming, 50033),
        Behavior::Throttle {
            retry_after,
            plain_text,
        } => throttle_reply(&incoming, retry_after, *plain_text),
        Behavior::ServerError { status, json } => server_error_reply(&incoming, *status, *json),
        Behavior::Html => proxy_login_page().into(),
        Behavior::Truncated => truncated_response().into(),
        Behavior::Oversized(size) => oversized_response(*size).into(),
        Behavior::Raw {
            status,
            headers,
            body,
        } => raw_response(*status, headers, body).into(),
    };
    tracing::debug!(
        tenant = %incoming.tenant,
        version = ?version,
        behavior = behavior_label(behavior),
        status = reply.response.status().as_u16(),
        aadsts = ?reply.aadsts,
        "simulated Entra token request"
    );
    reply.response
}

fn behavior_label(behavior: &Behavior) -> &'static str {
    match behavior {
        Behavior::Normal => "normal",
        Behavior::Aadsts(_) => "aadsts",
        Behavior::Throttle { .. } => "throttle",
        Behavior::ServerError { .. } => "server_error",
        Behavior::TemporarilyUnavailable => "temporarily_unavailable",
        Behavior::Slow(_) => "slow",
        Behavior::Html => "html",
        Behavior::Truncated => "truncated",
        Behavior::Oversized(_) => "oversized",
        Behavior::Hang => "hang",
        Behavior::Raw { .. } => "raw",
    }
}

fn answer_normally(shared: &Shared, incoming: &Incoming, admission: &Admission) -> Reply {
    let mut verified = None;
    let outcome = validate(
        incoming,
        admission.tenant.as_deref(),
        admission.credentials.as_deref(),
        &shared.authority_host,
        &mut verified,
    );
    if let Some(assertion) = verified {
        shared.record_assertion(&incoming.tenant_key, assertion);
    }
    match outcome {
        Ok(grant) => {
            shared.count_issued(&incoming.tenant_key);
            let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
            success_response(&shared.token_key, incoming, &grant, serial).into()
        }
        Err(rejection) => rejection.reply(incoming),
    }
}

/// Entra's checks for a client-credentials request, in Entra's order: tenant, grant and client,
/// credential, resource. A client assertion that passes verification is stored in `verified`,
/// whatever the later checks decide.
fn validate(
    incoming: &Incoming,
    tenant: Option<&SimTenant>,
    credentials: Option<&AppCredentials>,
    authority_host: &str,
    verified: &mut Option<SimAssertion>,
) -> Result<Grant, Rejection> {
    let tenant = check_tenant(incoming, tenant)?;
    let app = check_client(incoming, tenant)?;
    check_credential(incoming, app, credentials, authority_host, verified)?;
    let resource = check_resource(incoming, tenant)?;
    Ok(Grant {
        client_id: app.client_id.clone(),
        resource,
        lifetime: tenant.lifetime,
        refresh_in: tenant.refresh_in,
    })
}

/// The method, then the tenant path segment: its syntax, the multi-tenant aliases that client
/// credentials cannot use, and whether the directory exists.
fn check_tenant<'a>(
    incoming: &Incoming,
    tenant: Option<&'a SimTenant>,
) -> Result<&'a SimTenant, Rejection> {
    if incoming.method != Method::POST {
        return Err(Rejection::new(900561));
    }
    if !is_guid(&incoming.tenant) && !is_dns_like(&incoming.tenant) {
        return Err(Rejection::new(900023));
    }
    match incoming.tenant_key.as_str() {
        "common" | "consumers" => return Err(Rejection::new(9001023)),
        "organizations" => return Err(Rejection::new(90019)),
        _ => {}
    }
    tenant.ok_or_else(|| Rejection::new(90002))
}

/// `grant_type`, then `client_id` and the app registration it names in the tenant.
fn check_client<'a>(incoming: &Incoming, tenant: &'a SimTenant) -> Result<&'a SimApp, Rejection> {
    match incoming.param("grant_type") {
        None | Some("") => return Err(Rejection::missing("grant_type")),
        Some("client_credentials") => {}
        Some(other) => return Err(Rejection::new(70003).with("grant_type", other)),
    }
    let Some(client_id) = incoming.client_id() else {
        return Err(Rejection::missing("client_id"));
    };
    tenant
        .apps
        .iter()
        .find(|app| app.client_id.eq_ignore_ascii_case(client_id))
        .ok_or_else(|| Rejection::new(700016))
}

/// The app's secret (form or HTTP Basic) or, without one, its client assertion.
fn check_credential(
    incoming: &Incoming,
    app: &SimApp,
    credentials: Option<&AppCredentials>,
    authority_host: &str,
    verified: &mut Option<SimAssertion>,
) -> Result<(), Rejection> {
    let assertion = incoming
        .param("client_assertion")
        .filter(|assertion| !assertion.is_empty());
    match (incoming.client_secret(), assertion) {
        (Some(secret), _) => {
            if secret != app.secret {
                return Err(Rejection::new(7000215));
            }
            if app.secret_expired {
                return Err(Rejection::new(7000222));
            }
        }
        (None, Some(assertion)) => {
            // Entra's answer to an unknown `client_assertion_type` is not in the reference;
            // it is answered as a missing one.
            if incoming.param("client_assertion_type") != Some(JWT_BEARER_ASSERTION_TYPE) {
                return Err(Rejection::missing("client_assertion_type"));
            }
            let audience = token_endpoint_url(authority_host, &incoming.tenant, incoming.version);
            *verified = Some(verify_assertion(
                assertion,
                &app.client_id,
                credentials,
                &audience,
                unix_now(),
            )?);
        }
        (None, None) => return Err(Rejection::new(7000218)),
    }
    Ok(())
}

/// The resource the token is for (v2 `scope`, v1 `resource`): a Power BI or Fabric resource
/// whose service principal the tenant has (Fabric's App ID URI belongs to the Power BI Service
/// principal, so the two are present or missing together), or a Key Vault resource.
fn check_resource(incoming: &Incoming, tenant: &SimTenant) -> Result<String, Rejection> {
    let resource = match incoming.version {
        ApiVersion::V2 => v2_resource(incoming)?,
        ApiVersion::V1 => match incoming.param("resource") {
            None | Some("") => return Err(Rejection::missing("resource")),
            Some(resource) => resource.to_owned(),
        },
    };
    // Key Vault's service principal is in every tenant with an Azure subscription, so only
    // Power BI's can be missing.
    let known =
        if SimCloud::is_power_bi_resource(&resource) || SimCloud::is_fabric_resource(&resource) {
            tenant.power_bi_present
        } else {
            SimCloud::is_key_vault_resource(&resource)
        };
    if known {
        Ok(resource)
    } else {
        Err(Rejection::new(500011).with("resource", resource))
    }
}

/// The single resource a v2 `scope` names.
fn v2_resource(incoming: &Incoming) -> Result<String, Rejection> {
    if incoming.param("resource").is_some() {
        return Err(Rejection::new(901002));
    }
    let scope = incoming.param("scope").unwrap_or_default();
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.is_empty() {
        return Err(Rejection::missing("scope"));
    }
    let mut resources: Vec<&str> = Vec::with_capacity(scopes.len());
    for item in &scopes {
        let Some(resource) = item.strip_suffix("/.default") else {
            return Err(Rejection::new(1002012).with("scope", *item));
        };
        if !resources.contains(&resource) {
            resources.push(resource);
        }
    }
    match resources.as_slice() {
        [single] => Ok((*single).to_owned()),
        _ => Err(Rejection::new(700022)),
    }
}

/// The token endpoint URL a client posts to, which its assertions must name as `aud`.
fn token_endpoint_url(authority_host: &str, tenant: &str, version: ApiVersion) -> String {
    match version {
        ApiVersion::V2 => format!("{authority_host}/{tenant}/oauth2/v2.0/token"),
        ApiVersion::V1 => format!("{authority_host}/{tenant}/oauth2/token"),
    }
}

pub(super) async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    request: Request,
) -> Response {
    let tenant = tenant_segment(request.uri().path());
    if shared.tenant(&tenant_key(&tenant)).is_none() {
        let (status, _, text) = catalogue(90002);
        let body = error_body(
            "invalid_tenant",
            90002,
            text,
            &[("tenant", tenant.clone())],
            None,
        );
        tracing::debug!(%tenant, status = status.as_u16(), "simulated Entra discovery request");
        return (status, json_headers(), body).into_response();
    }
    let host = &shared.authority_host;
    let document = serde_json::json!({
        "token_endpoint": token_endpoint_url(host, &tenant, ApiVersion::V2),
        "token_endpoint_auth_methods_supported":
            ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{host}/{tenant}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{host}/{tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "authorization_endpoint": format!("{host}/{tenant}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{host}/{tenant}/oauth2/v2.0/devicecode"),
        "end_session_endpoint": format!("{host}/{tenant}/oauth2/v2.0/logout"),
        "tenant_region_scope": "NA",
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    });
    tracing::debug!(%tenant, status = 200, "simulated Entra discovery request");
    (StatusCode::OK, json_headers(), document.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_support::*;
    use super::super::wire::REDACTED;
    use super::*;
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    #[tokio::test]
    async fn every_sovereign_power_bi_resource_is_accepted() {
        let Fixture { sim, http } = fixture().await;
        for resource in SimCloud::ALL.map(SimCloud::power_bi_resource) {
            let scope = format!("{resource}/.default");
            let mut form: Vec<(&str, &str)> = without(v2_form(), "scope");
            form.push(("scope", &scope));
            let answer = post(&http, &v2_url(&sim, TENANT), &form).await;
            assert_eq!(answer.status, 200, "{resource}: {}", answer.body);
        }
    }

    #[tokio::test]
    async fn every_key_vault_resource_is_accepted_on_both_endpoints() {
        let Fixture { sim, http } = fixture().await;
        let mut tenant = SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599));
        // Key Vault does not depend on Power BI's service principal.
        tenant.power_bi_present = false;
        sim.add_tenant(TENANT, tenant);
        for resource in SimCloud::ALL.map(SimCloud::key_vault_resource) {
            let scope = format!("{resource}/.default");
            let mut form: Vec<(&str, &str)> = without(v2_form(), "scope");
            form.push(("scope", &scope));
            let answer = post(&http, &v2_url(&sim, TENANT), &form).await;
            assert_eq!(answer.status, 200, "{resource}: {}", answer.body);
            let claims = decode_claims(answer.json()["access_token"].as_str().expect("token"));
            assert_eq!(claims["aud"], resource);

            let mut form: Vec<(&str, &str)> = without(v1_form(), "resource");
            form.push(("resource", resource));
            let answer = post(&http, &v1_url(&sim, TENANT), &form).await;
            assert_eq!(answer.status, 200, "{resource}: {}", answer.body);
            assert_eq!(answer.json()["resource"], resource);
        }
        // Near misses are other resources.
        for resource in [
            "https://vault.azure.net/",
            "https://myvault.vault.azure.net",
        ] {
            let mut form: Vec<(&str, &str)> = without(v1_form(), "resource");
            form.push(("resource", resource));
            let answer = post(&http, &v1_url(&sim, TENANT), &form).await;
            assert_entra_error(&answer, 400, "invalid_resource", 500011);
        }
    }

    #[tokio::test]
    async fn basic_authentication_is_accepted_with_url_encoded_credentials() {
        let Fixture { sim, http } = fixture().await;
        let credentials = format!(
            "{APP}:{}",
            SECRET
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
                .replace('&', "%26")
        );
        let request = http
            .post(v2_url(&sim, TENANT))
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(credentials)),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", POWER_BI_SCOPE),
            ]);
        let answer = answer(request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let recorded = sim.last_request(TENANT).expect("recorded");
        let authorization = recorded
            .headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str());
        assert_eq!(authorization, Some("Basic [REDACTED]"));
    }

    #[tokio::test]
    async fn basic_authentication_with_a_wrong_secret_is_rejected() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header(
                "authorization",
                format!("Basic {}", STANDARD.encode(format!("{APP}:nope"))),
            )
            .form(&[
                ("grant_type", "client_credentials"),
                ("scope", POWER_BI_SCOPE),
            ]);
        assert_entra_error(&answer(request).await, 401, "invalid_client", 7000215);
    }

    #[tokio::test]
    async fn tenant_errors() {
        let Fixture { sim, http } = fixture().await;
        let answer = post(&http, &v2_url(&sim, "not_a%20tenant!"), &v2_form()).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900023);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("'not_a tenant!' is neither a valid DNS name"),
            "{description}"
        );

        for special in ["common", "consumers"] {
            let answer = post(&http, &v2_url(&sim, special), &v2_form()).await;
            assert_entra_error(&answer, 400, "invalid_request", 9001023);
        }
        let answer = post(&http, &v2_url(&sim, "organizations"), &v2_form()).await;
        assert_entra_error(&answer, 400, "invalid_request", 90019);

        let answer = post(&http, &v1_url(&sim, "fabrikam.onmicrosoft.com"), &v1_form()).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 90002);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("Tenant 'fabrikam.onmicrosoft.com' not found."),
            "{description}"
        );
    }

    #[tokio::test]
    async fn grant_and_client_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &with(v2_form(), "grant_type", "password")).await;
        let body = assert_entra_error(&answer, 400, "unsupported_grant_type", 70003);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'password'")
        );

        let answer = post(&http, &url, &without(v2_form(), "grant_type")).await;
        assert_entra_error(&answer, 400, "invalid_request", 900144);

        let answer = post(&http, &url, &without(v2_form(), "client_id")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'client_id'")
        );

        let stranger = "11111111-2222-3333-4444-555555555555";
        let answer = post(&http, &url, &with(v2_form(), "client_id", stranger)).await;
        let body = assert_entra_error(&answer, 400, "unauthorized_client", 700016);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!(
                "Application with identifier '{stranger}' was not found in the directory '{TENANT}'"
            )),
            "{description}"
        );
    }

    #[tokio::test]
    async fn secret_errors_never_echo_the_secret() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &without(v2_form(), "client_secret")).await;
        assert_entra_error(&answer, 401, "invalid_client", 7000218);

        let answer = post(
            &http,
            &url,
            &with(v2_form(), "client_secret", "wrong-secret"),
        )
        .await;
        let body = assert_entra_error(&answer, 401, "invalid_client", 7000215);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains(&format!("app '{APP}'")),
            "{description}"
        );
        assert!(!answer.body.contains("wrong-secret"));

        let mut expired = SimApp::new(APP, SECRET);
        expired.secret_expired = true;
        sim.set_app(TENANT, expired);
        let answer = post(&http, &url, &v2_form()).await;
        assert_entra_error(&answer, 401, "invalid_client", 7000222);
        assert!(!answer.body.contains(SECRET));

        let answer = post(
            &http,
            &url,
            &with(
                with(
                    without(v2_form(), "client_secret"),
                    "client_assertion",
                    "eyJ.e30.sig",
                ),
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_request", 50027);

        let recorded = sim.last_request(TENANT).expect("recorded");
        assert!(
            recorded
                .form
                .contains(&("client_assertion".to_owned(), REDACTED.to_owned()))
        );
    }

    #[tokio::test]
    async fn v2_scope_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v2_url(&sim, TENANT);
        let answer = post(&http, &url, &with(v2_form(), "resource", POWER_BI)).await;
        assert_entra_error(&answer, 400, "invalid_request", 901002);

        let answer = post(&http, &url, &without(v2_form(), "scope")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'scope'")
        );

        let answer = post(
            &http,
            &url,
            &with(
                v2_form(),
                "scope",
                "https://analysis.windows.net/powerbi/api/Report.Read.All",
            ),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_scope", 1002012);

        let answer = post(&http, &url,
            &with(v2_form(), "scope", "https://analysis.windows.net/powerbi/api/.default https://graph.microsoft.com/.default"),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_scope", 700022);

        let answer = post(
            &http,
            &url,
            &with(v2_form(), "scope", "https://graph.microsoft.com/.default"),
        )
        .await;
        let body = assert_entra_error(&answer, 400, "invalid_resource", 500011);
        let description = body["error_description"].as_str().unwrap_or_default();
        assert!(
            description.contains("https://graph.microsoft.com was not found"),
            "{description}"
        );
        assert_eq!(sim.issued_count(TENANT), 0);
    }

    #[tokio::test]
    async fn v1_resource_errors() {
        let Fixture { sim, http } = fixture().await;
        let url = v1_url(&sim, TENANT);
        let answer = post(&http, &url, &without(v1_form(), "resource")).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'resource'")
        );
        let answer = post(
            &http,
            &url,
            &with(v1_form(), "resource", "https://management.azure.com/"),
        )
        .await;
        assert_entra_error(&answer, 400, "invalid_resource", 500011);
    }

    #[tokio::test]
    async fn tenant_without_power_bi_gets_invalid_resource() {
        let Fixture { sim, http } = fixture().await;
        let mut tenant = SimTenant::new(SimApp::new(APP, SECRET), Duration::from_secs(3599));
        tenant.power_bi_present = false;
        sim.add_tenant(TENANT, tenant);
        let answer = post(&http, &v2_url(&sim, TENANT), &v2_form()).await;
        assert_entra_error(&answer, 400, "invalid_resource", 500011);
        // Fabric's App ID URI is the Power BI Service principal's too.
        let fabric = with(
            v2_form(),
            "scope",
            "https://api.fabric.microsoft.com/.default",
        );
        let answer = post(&http, &v2_url(&sim, TENANT), &fabric).await;
        assert_entra_error(&answer, 400, "invalid_resource", 500011);
    }

    #[tokio::test]
    async fn non_form_bodies_and_other_methods_are_rejected() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("content-type", "application/json")
            .body(r#"{"grant_type":"client_credentials"}"#);
        let body = assert_entra_error(&answer(request).await, 400, "invalid_request", 900144);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("'grant_type'")
        );

        let answer = answer(http.get(v2_url(&sim, TENANT))).await;
        let body = assert_entra_error(&answer, 400, "invalid_request", 900561);
        assert!(
            body["error_description"]
                .as_str()
                .unwrap_or_default()
                .contains("Received a GET request")
        );
    }

    #[tokio::test]
    async fn extra_parameters_and_headers_are_tolerated_and_recorded() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("x-client-sku", "powerbi-tokend")
            .header("x-ms-lib-capability", "retry-after, h429")
            .header("client-request-id", "0f0e0d0c-1111-2222-3333-444455556666")
            .header("return-client-request-id", "true")
            .form(&with(v2_form(), "client_info", "1"));
        let answer = answer(request).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(
            answer.header("client-request-id"),
            Some("0f0e0d0c-1111-2222-3333-444455556666")
        );
        let recorded = sim.last_request(TENANT).expect("recorded");
        assert_eq!(recorded.version, ApiVersion::V2);
        assert!(
            recorded
                .form
                .contains(&("client_info".to_owned(), "1".to_owned()))
        );
        assert!(
            recorded
                .form
                .contains(&("scope".to_owned(), POWER_BI_SCOPE.to_owned()))
        );
        assert!(
            recorded
                .headers
                .contains(&("x-client-sku".to_owned(), "powerbi-tokend".to_owned()))
        );
    }

    #[tokio::test]
    async fn client_request_id_becomes_the_correlation_id() {
        let Fixture { sim, http } = fixture().await;
        let request = http
            .post(v2_url(&sim, TENANT))
            .header("client-request-id", "9f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff")
            .form(&with(v2_form(), "client_secret", "wrong"));
        let body = assert_entra_error(&answer(request).await, 401, "invalid_client", 7000215);
        assert_eq!(
            body["correlation_id"],
            "9f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff"
        );
    }

    #[tokio::test]
    async fn client_request_id_is_returned_only_when_asked() {
        let Fixture { sim, http } = fixture().await;
        let id = "9f1e2d3c-aaaa-bbbb-cccc-ddddeeeeffff";
        let request = || {
            http.post(v2_url(&sim, TENANT))
                .header("client-request-id", id)
                .form(&v2_form())
        };
        let plain = answer(request()).await;
        assert_eq!(plain.status, 200, "{}", plain.body);
        assert_eq!(plain.headers.get("client-request-id"), None);
        let asked = answer(request().header("return-client-request-id", "true")).await;
        assert_eq!(asked.status, 200, "{}", asked.body);
        assert_eq!(
            asked
                .headers
                .get("client-request-id")
                .map(|v| v.to_str().unwrap()),
            Some(id)
        );
    }

    #[tokio::test]
    async fn openid_configuration_for_known_and_unknown_tenants() {
        let Fixture { sim, http } = fixture().await;
        let url = format!(
            "{}/{TENANT}/v2.0/.well-known/openid-configuration",
            sim.authority_host()
        );
        let known = answer(http.get(&url)).await;
        assert_eq!(known.status, 200);
        assert_eq!(known.json()["token_endpoint"], v2_url(&sim, TENANT));

        let url = format!(
            "{}/nobody.example.com/v2.0/.well-known/openid-configuration",
            sim.authority_host()
        );
        let unknown = answer(http.get(&url)).await;
        assert_entra_error(&unknown, 400, "invalid_tenant", 90002);
        assert_eq!(sim.total_requests(), 0, "discovery is not a token request");
    }
}
