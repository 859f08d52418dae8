//! The simulated vaults as tests see them: [`SimKeyVault`], the control handle of one vault,
//! and [`SimEntra::start_key_vault`], which starts another.
//!
//! The vault on the simulator's own listener ([`SimEntra::key_vault`]) is the one most tests
//! need. A daemon whose tenants read different vaults, each in its own directory and readable
//! by a different identity, needs more: each further vault has a listener of its own (so its
//! URL is `{its address}/secrets/{name}`, as a real vault's is `https://{name}.vault.azure.net`),
//! its own directory, cloud, grants, secrets, faults and counters, and accepts the tokens of
//! the same simulated Entra ID, which its challenge names as the authority. It serves plain
//! HTTP (loopback), whatever the simulator's own listener speaks.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::routing::any;

use super::SimEntra;
use super::cloud::SimCloud;
use super::key_vault::{
    KeyVaultFault, KeyVaultState, SimSecretAttributes, VAULT_NAME, VaultRoute, name_key, secret,
};
use super::wire::client_key;

/// The control handle of one simulated vault: its URL, directory, cloud, access grants,
/// secrets, faults and counters. Cheap to clone; every clone controls the same vault.
#[derive(Clone)]
pub struct SimKeyVault {
    /// The simulator and the vault's state, as its handler sees them.
    route: VaultRoute,
}

impl SimEntra {
    /// The vault on the simulator's own listener, whose URL is [`SimEntra::key_vault_url`].
    pub fn key_vault(&self) -> SimKeyVault {
        SimKeyVault {
            route: VaultRoute {
                shared: Arc::clone(&self.shared),
                vault: Arc::clone(&self.shared.key_vault),
            },
        }
    }

    /// Starts another vault, on a listener of its own (127.0.0.1:0, plain HTTP), until the
    /// simulator is dropped. It begins as the first one does: in the managed identities'
    /// directory, in the Power BI API's cloud, empty, nobody granted.
    ///
    /// # Errors
    /// The listener cannot be bound.
    pub async fn start_key_vault(&self) -> std::io::Result<SimKeyVault> {
        let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let state = KeyVaultState::new(
            format!("http://{addr}"),
            format!("{VAULT_NAME}-{}", addr.port()),
        );
        let route = VaultRoute {
            shared: Arc::clone(&self.shared),
            vault: Arc::new(Mutex::new(state)),
        };
        let app = Router::new()
            .route("/secrets/{*path}", any(secret))
            .with_state(route.clone());
        let mut stop = self.shared.shutdown.clone();
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // An error means the simulator is gone, which is a shutdown too.
                    let _ = stop.wait_for(|&stopped| stopped).await;
                })
                .await;
            if let Err(error) = served {
                tracing::warn!(%error, "simulated Key Vault stopped with an error");
            }
        });
        tracing::debug!(%addr, "simulated Key Vault listening");
        Ok(SimKeyVault { route })
    }
}

impl SimKeyVault {
    /// `"http://127.0.0.1:PORT"` (no trailing slash): the vault URL to give the daemon, which
    /// reads `{this}/secrets/{name}[/{version}]`; secret ids in its answers begin with it.
    pub fn url(&self) -> String {
        self.route.state().url.clone()
    }

    /// Sets the directory the vault belongs to: bearer tokens must name it as `tid` (matched
    /// case-insensitively, so a token requested with a domain name in the path needs the same
    /// domain here), and 401 challenges send clients to `{authority host}/{tenant_id}`. Until
    /// then, the tenant of the simulated host's managed identities.
    pub fn set_tenant(&self, tenant_id: &str) {
        self.route.state().tenant = tenant_id.to_owned();
    }

    /// The directory the vault belongs to (see [`SimKeyVault::set_tenant`]).
    pub fn tenant(&self) -> String {
        self.route.state().tenant.clone()
    }

    /// Puts the vault in `cloud`: tokens must be for its Key Vault resource, which the
    /// challenge names. Until then the vault follows
    /// [`SimEntra::set_powerbi_cloud`](super::SimEntra::set_powerbi_cloud).
    pub fn set_cloud(&self, cloud: SimCloud) {
        self.route.state().cloud = Some(cloud);
    }

    /// Lets the app or managed identity with this client id (`appid` of its tokens, matched
    /// case-insensitively) read secrets, as the "Key Vault Secrets User" role does. Nobody may
    /// read until granted: other callers get 403 `ForbiddenByRbac`.
    pub fn grant_access(&self, principal: &str) {
        self.route.state().readers.insert(client_key(principal));
    }

    /// Takes a grant back (a role assignment removed); later reads get 403 `ForbiddenByRbac`.
    pub fn revoke_access(&self, principal: &str) {
        self.route.state().readers.remove(&client_key(principal));
    }

    /// Stores a new version of a secret (creating the secret if needed) and makes it the
    /// current one, as setting a secret in Key Vault does; earlier versions stay readable by
    /// id. Returns the new version's id: 32 lower-case hex digits. Names are matched
    /// case-insensitively; the `id` in answers spells the name as it was first set. A name the
    /// endpoint refuses (not 1-127 letters, digits and hyphens) is stored but can never be read.
    pub fn set_secret(&self, name: &str, value: &str, attributes: SimSecretAttributes) -> String {
        self.route.state().set_secret(name, value, attributes)
    }

    /// Disables one version of a secret (it then gets 403 `SecretDisabled`; if it is the
    /// current version, so do reads without a version). `false` when the secret or version is
    /// unknown.
    pub fn disable_secret_version(&self, name: &str, version: &str) -> bool {
        self.route.state().disable_version(name, version)
    }

    /// Injects a failure for every read of the secret (any version) by a caller whose token
    /// verified, or with `None` removes it. May precede the secret.
    pub fn set_fault(&self, name: &str, fault: Option<KeyVaultFault>) {
        let mut state = self.route.state();
        match fault {
            Some(fault) => {
                state.faults.insert(name_key(name), fault);
            }
            None => {
                state.faults.remove(&name_key(name));
            }
        }
    }

    /// Successful reads (200 answers) of the secret, any version, by name case-insensitively:
    /// how a test proves that many tenants sharing one credential cost one read.
    pub fn read_count(&self, name: &str) -> u64 {
        self.route
            .state()
            .reads
            .get(&name_key(name))
            .copied()
            .unwrap_or(0)
    }

    /// Every request to `/secrets/…`, whatever the answer, 401 challenges included.
    pub fn request_count(&self) -> u64 {
        self.route.state().requests
    }

    /// The `x-ms-client-request-id` header of each request to `/secrets/…`, oldest first, the
    /// latest 1024: `None` where a request had none. How a test proves every call can be traced.
    pub fn client_request_ids(&self) -> Vec<Option<String>> {
        self.route
            .state()
            .client_request_ids
            .iter()
            .cloned()
            .collect()
    }

    /// The client id (`appid`) of the latest caller that passed the vault's access check, as
    /// its token spelled it: which identity read.
    pub fn last_caller(&self) -> Option<String> {
        self.route.state().last_caller.clone()
    }
}

/// Never shows a secret: the vault's address and directory only.
impl std::fmt::Debug for SimKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.route.state();
        f.debug_struct("SimKeyVault")
            .field("url", &state.url)
            .field("tenant", &state.tenant)
            .finish_non_exhaustive()
    }
}
