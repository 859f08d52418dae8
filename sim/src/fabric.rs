//! The Microsoft Fabric REST API of the simulator: `GET /v1/workspaces` (Fabric's List
//! Workspaces), the call the daemon's probe makes for a tenant whose token is for Fabric. It
//! shares the Power BI listener, so [`SimEntra::powerbi_api`](super::SimEntra::powerbi_api) is
//! its root too (`fabric_api` in the daemon's config).
//!
//! The bearer token is checked as for Power BI (`powerbi.rs`), for Fabric's audience
//! (`https://api.fabric.microsoft.com`, where the simulated cloud has Fabric: the public cloud).
//! A token for Power BI's audience, or any other, is not Fabric's: 401 `InvalidToken`. A valid
//! token's tenant then gets its [`PowerBiBehavior`], answered as Fabric answers it.
//!
//! Wire details and where they come from:
//! * Error body: Fabric's `ErrorResponse`, `{"requestId","errorCode","message"}` (Microsoft's
//!   "Fabric API troubleshooting" article), with the request id also in a `requestId` header
//!   and the code in `x-ms-public-api-error-code` (the header the Fabric Go SDK's test server
//!   sets). The other headers are Power BI's: responses from `api.fabric.microsoft.com` quoted
//!   in issues carry the same `Cache-Control`, `X-Frame-Options`, `X-Content-Type-Options` and
//!   `Access-Control-Expose-Headers: RequestId`.
//! * 401 `InvalidToken` "Access token is invalid" as a Fabric community thread quotes it; 429
//!   `RequestBlocked` "Request is blocked by the upstream service until: <time>" with
//!   `Retry-After` as microsoft/fabric-migration#14 quotes it. `TokenExpired`, `Unauthorized`
//!   (service principals not allowed by the tenant's settings), `EntityNotFound` and
//!   `UnknownError` are codes of the Fabric SDK's common list; their statuses follow the
//!   troubleshooting article (401 for authentication, 404, 500), their messages are unconfirmed.
//! * 200 body: `{"value":[{"id","displayName","description","type","capacityId"}]}` as in the
//!   List Workspaces reference sample; the workspaces are the ones `groups` lists for the
//!   tenant, with the same ids. `roles` and `continuationToken` are accepted and ignored (one
//!   page holds them all).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::Shared;
use super::powerbi::{
    PowerBiBehavior, PowerBiEndpoint, Refusal, Reply, WORKSPACE_NAMES, stable_guid, verify_bearer,
};
use super::wire::random_guid;

/// The header that repeats a failure's `errorCode`.
const ERROR_CODE: HeaderName = HeaderName::from_static("x-ms-public-api-error-code");

pub(super) async fn workspaces(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let request_id = random_guid();
    let mut tenant = None;
    let reply = answer_request(
        &shared,
        &parts.method,
        &parts.headers,
        &request_id,
        &mut tenant,
    );
    tracing::debug!(
        endpoint = PowerBiEndpoint::FabricWorkspaces.label(),
        tenant = tenant.as_deref().unwrap_or("-"),
        status = reply.status.as_u16(),
        error = reply.error_code.unwrap_or("-"),
        request_id,
        "simulated Fabric request"
    );
    reply.into_response_with(&request_id, ERROR_CODE)
}

/// The checks in order: method, bearer token, the tenant's behaviour, then the list. `tenant`
/// is set once the token has named one; `request_id` goes into an error's body.
fn answer_request(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    request_id: &str,
    tenant: &mut Option<String>,
) -> Reply {
    let error = |status, code, message: &str| fabric_error(status, code, message, request_id);
    if method != Method::GET {
        let mut reply = error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UnsupportedHttpMethod",
            "The requested resource does not support this HTTP method.",
        );
        reply.extra = Some((header::ALLOW, HeaderValue::from_static("GET")));
        return reply;
    }
    let audience = shared.powerbi().cloud.fabric_resource();
    let caller = match verify_bearer(shared, headers, audience) {
        Ok(caller) => caller,
        Err(Refusal::Invalid) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "InvalidToken",
                "Access token is invalid",
            );
        }
        Err(Refusal::Expired) => return token_expired(request_id),
    };
    *tenant = Some(caller.tenant.clone());
    let behavior =
        shared.admit_powerbi(&caller.tenant_key, PowerBiEndpoint::FabricWorkspaces, None);
    match behavior {
        PowerBiBehavior::Ok => list(&caller.tenant_key),
        PowerBiBehavior::NotAuthorized => error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "The caller is not authorized to use Fabric public APIs",
        ),
        PowerBiBehavior::TokenExpired => token_expired(request_id),
        PowerBiBehavior::NotFound => error(
            StatusCode::NOT_FOUND,
            "EntityNotFound",
            "The entity could not be found",
        ),
        PowerBiBehavior::Throttled { retry_after_secs } => blocked(retry_after_secs, request_id),
        PowerBiBehavior::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UnknownError",
            "An error occurred",
        ),
    }
}

/// The tenant's workspaces, with the ids `groups` gives them.
fn list(tenant_key: &str) -> Reply {
    let capacity = stable_guid(&["capacity", tenant_key]);
    let workspaces: Vec<Value> = WORKSPACE_NAMES
        .iter()
        .map(|name| {
            json!({
                "id": stable_guid(&["workspace", tenant_key, name]),
                "displayName": name,
                "description": "",
                "type": "Workspace",
                "capacityId": capacity,
            })
        })
        .collect();
    Reply::ok(json!({ "value": workspaces }))
}

/// Fabric's `ErrorResponse`.
fn fabric_error(status: StatusCode, code: &'static str, message: &str, request_id: &str) -> Reply {
    let body = json!({ "requestId": request_id, "errorCode": code, "message": message });
    Reply::error(status, code, body)
}

fn token_expired(request_id: &str) -> Reply {
    fabric_error(
        StatusCode::UNAUTHORIZED,
        "TokenExpired",
        "Access token has expired",
        request_id,
    )
}

/// 429 until `retry_after_secs` from now, in the words and time format Fabric uses.
fn blocked(retry_after_secs: u64, request_id: &str) -> Reply {
    let until = chrono::Utc::now() + Duration::from_secs(retry_after_secs.min(365 * 24 * 3600));
    let message = format!(
        "Request is blocked by the upstream service until: {}",
        until.format("%-m/%-d/%Y %-I:%M:%S %p")
    );
    let mut reply = fabric_error(
        StatusCode::TOO_MANY_REQUESTS,
        "RequestBlocked",
        &message,
        request_id,
    );
    reply.extra = Some((header::RETRY_AFTER, HeaderValue::from(retry_after_secs)));
    reply
}

#[cfg(test)]
mod tests {
    use super::super::cloud::SimCloud;
    use super::super::test_support::*;
    use super::super::wire::JSON_CONTENT_TYPE;
    use super::super::{SimApp, SimTenant};
    use super::*;

    const FABRIC: &str = "https://api.fabric.microsoft.com";
    const FABRIC_SCOPE: &str = "https://api.fabric.microsoft.com/.default";

    async fn list(fixture: &Fixture, token: &str) -> Answer {
        let url = format!("{}/v1/workspaces", fixture.sim.powerbi_api());
        answer(fixture.http.get(url).bearer_auth(token)).await
    }

    /// Checks Fabric's error shape: status, `errorCode` in the body and the header, and the
    /// same request id in the body and the header.
    fn assert_fabric_error(answer: &Answer, status: u16, code: &str) -> Value {
        assert_eq!(answer.status, status, "{}", answer.body);
        assert_eq!(answer.header("content-type"), Some(JSON_CONTENT_TYPE));
        assert_eq!(answer.header("x-ms-public-api-error-code"), Some(code));
        let body = answer.json();
        assert_eq!(body["errorCode"], code, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
        let request_id = answer.header("requestid").expect("requestId header");
        assert!(looks_like_guid(request_id), "{request_id}");
        assert_eq!(body["requestId"], request_id);
        assert!(
            body.get("error").is_none(),
            "not Power BI's envelope: {body}"
        );
        body
    }

    #[tokio::test]
    async fn a_fabric_token_lists_the_workspaces_power_bi_lists() {
        let fixture = fixture().await;
        let token = bearer(&fixture, FABRIC_SCOPE).await;
        assert_eq!(decode_claims(&token)["aud"], FABRIC);
        let answer = list(&fixture, &token).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert!(answer.header("requestid").is_some_and(looks_like_guid));
        assert_eq!(answer.header("x-ms-public-api-error-code"), None);
        let workspaces = answer.json()["value"].as_array().expect("value").clone();
        assert_eq!(workspaces.len(), WORKSPACE_NAMES.len());
        for (workspace, name) in workspaces.iter().zip(WORKSPACE_NAMES) {
            assert_eq!(workspace["displayName"], name);
            assert_eq!(workspace["type"], "Workspace");
            assert!(looks_like_guid(workspace["id"].as_str().expect("id")));
            assert!(looks_like_guid(
                workspace["capacityId"].as_str().expect("capacity")
            ));
        }
        // The same workspaces, with the same ids, as Power BI's groups.
        let power_bi = bearer(&fixture, POWER_BI_SCOPE).await;
        let groups = answer_groups(&fixture, &power_bi).await;
        let ids = |list: &[Value]| -> Vec<Value> { list.iter().map(|w| w["id"].clone()).collect() };
        assert_eq!(ids(&workspaces), ids(&groups));
        // v1 asks for the resource itself, and gets the same audience.
        let v1 = post(
            &fixture.http,
            &v1_url(&fixture.sim, TENANT),
            &with(v1_form(), "resource", FABRIC),
        )
        .await;
        assert_eq!(v1.status, 200, "{}", v1.body);
        let v1_token = v1.json()["access_token"]
            .as_str()
            .expect("token")
            .to_owned();
        assert_eq!(list(&fixture, &v1_token).await.status, 200);
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::FabricWorkspaces),
            2
        );
    }

    async fn answer_groups(fixture: &Fixture, token: &str) -> Vec<Value> {
        let url = format!("{}/v1.0/myorg/groups", fixture.sim.powerbi_api());
        let answer = answer(fixture.http.get(url).bearer_auth(token)).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["value"].as_array().expect("value").clone()
    }

    #[tokio::test]
    async fn a_token_that_is_not_fabrics_gets_fabrics_401() {
        let fixture = fixture().await;
        let power_bi = bearer(&fixture, POWER_BI_SCOPE).await;
        let fabric = bearer(&fixture, FABRIC_SCOPE).await;
        let url = format!("{}/v1/workspaces", fixture.sim.powerbi_api());
        let body = assert_fabric_error(&list(&fixture, &power_bi).await, 401, "InvalidToken");
        assert_eq!(body["message"], "Access token is invalid");
        for bad in ["not-a-jwt", "a.b.c", &format!("{fabric}x")] {
            assert_fabric_error(&list(&fixture, bad).await, 401, "InvalidToken");
        }
        assert_fabric_error(&answer(fixture.http.get(&url)).await, 401, "InvalidToken");
        // A Fabric token does not open Power BI either.
        let groups = format!("{}/v1.0/myorg/groups", fixture.sim.powerbi_api());
        let refused = answer(fixture.http.get(&groups).bearer_auth(&fabric)).await;
        assert_eq!(refused.status, 401);
        assert_eq!(
            refused.header("x-powerbi-error-info"),
            Some("PowerBINotAuthorizedException")
        );
        // Nothing above named a tenant of Fabric's, so nothing was counted.
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::FabricWorkspaces),
            0
        );
        // A cloud without Fabric has no Fabric token to accept.
        fixture.sim.set_powerbi_cloud(SimCloud::Gcc);
        assert_fabric_error(&list(&fixture, &fabric).await, 401, "InvalidToken");

        let wrong_method = answer(fixture.http.post(&url).bearer_auth(&fabric)).await;
        assert_eq!(wrong_method.status, 405);
        assert_eq!(wrong_method.header("allow"), Some("GET"));
    }

    #[tokio::test]
    async fn each_behavior_gets_fabrics_status_code_and_message() {
        let fixture = fixture().await;
        let token = bearer(&fixture, FABRIC_SCOPE).await;
        let cases = [
            (PowerBiBehavior::NotAuthorized, 401, "Unauthorized"),
            (PowerBiBehavior::TokenExpired, 401, "TokenExpired"),
            (PowerBiBehavior::NotFound, 404, "EntityNotFound"),
            (
                PowerBiBehavior::Throttled {
                    retry_after_secs: 7,
                },
                429,
                "RequestBlocked",
            ),
            (PowerBiBehavior::ServerError, 500, "UnknownError"),
        ];
        for (behavior, status, code) in cases {
            fixture.sim.set_powerbi_behavior(TENANT, behavior);
            let answer = list(&fixture, &token).await;
            let body = assert_fabric_error(&answer, status, code);
            if status == 429 {
                assert_eq!(answer.header("retry-after"), Some("7"));
                assert!(
                    body["message"]
                        .as_str()
                        .unwrap()
                        .starts_with("Request is blocked by the upstream service until: "),
                    "{body}"
                );
            } else {
                assert_eq!(answer.header("retry-after"), None);
            }
        }
        assert_eq!(
            fixture
                .sim
                .powerbi_request_count(TENANT, PowerBiEndpoint::FabricWorkspaces),
            5
        );
    }

    #[tokio::test]
    async fn an_expired_fabric_token_gets_401_token_expired() {
        let fixture = fixture().await;
        fixture.sim.add_tenant(
            TENANT,
            SimTenant::new(SimApp::new(APP, SECRET), Duration::ZERO),
        );
        let token = bearer(&fixture, FABRIC_SCOPE).await;
        assert_fabric_error(&list(&fixture, &token).await, 401, "TokenExpired");
    }
}
