//! The sovereign clouds as the simulator sees them: which Power BI resource, which Fabric
//! resource and which Key Vault resource a token must be for (protocol reference §7 and §10;
//! Fabric runs in the public cloud only).
//!
//! The daemon has the same table (`powerbi_tokend::cloud::Cloud`), but the simulator cannot use
//! it: the daemon's `demo` depends on the simulator, and a dependency back would be a cycle. The
//! daemon's `tests/clouds.rs` holds the two equal, cloud by cloud, so a token the daemon asks for
//! is one the simulator issues and accepts.

/// A sovereign cloud: the one whose resources the simulated Power BI API and key vault expect
/// ([`SimEntra::set_powerbi_cloud`](crate::SimEntra::set_powerbi_cloud)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SimCloud {
    /// Commercial Power BI.
    #[default]
    Public,
    /// US Government Community Cloud: commercial Entra and Key Vault, government Power BI.
    Gcc,
    /// US GCC High (DoDCON endpoints).
    Gcchigh,
    /// US Department of Defense.
    Dod,
    /// China, operated by 21Vianet.
    China,
}

impl SimCloud {
    /// Every cloud: the token endpoints issue tokens for the resources of all of them.
    pub const ALL: [SimCloud; 5] = [
        SimCloud::Public,
        SimCloud::Gcc,
        SimCloud::Gcchigh,
        SimCloud::Dod,
        SimCloud::China,
    ];

    /// The Power BI App ID URI (v1 `resource`; v2 scope is this plus `/.default`): the `aud` the
    /// Power BI API of this cloud accepts.
    pub fn power_bi_resource(self) -> &'static str {
        match self {
            SimCloud::Public => "https://analysis.windows.net/powerbi/api",
            SimCloud::Gcc => "https://analysis.usgovcloudapi.net/powerbi/api",
            SimCloud::Gcchigh => "https://high.analysis.usgovcloudapi.net/powerbi/api",
            SimCloud::Dod => "https://mil.analysis.usgovcloudapi.net/powerbi/api",
            SimCloud::China => "https://analysis.chinacloudapi.cn/powerbi/api",
        }
    }

    /// The Azure Key Vault resource (v1 `resource`; v2 scope is this plus `/.default`): the
    /// `aud` the vaults of this cloud accept. GCC runs on the commercial cloud.
    pub fn key_vault_resource(self) -> &'static str {
        match self {
            SimCloud::Public | SimCloud::Gcc => "https://vault.azure.net",
            SimCloud::Gcchigh | SimCloud::Dod => "https://vault.usgovcloudapi.net",
            SimCloud::China => "https://vault.azure.cn",
        }
    }

    /// The Microsoft Fabric App ID URI (v1 `resource`; v2 scope is this plus `/.default`): the
    /// `aud` the Fabric REST API accepts, in the clouds Fabric exists in (the public cloud).
    pub fn fabric_resource(self) -> Option<&'static str> {
        match self {
            SimCloud::Public => Some("https://api.fabric.microsoft.com"),
            SimCloud::Gcc | SimCloud::Gcchigh | SimCloud::Dod | SimCloud::China => None,
        }
    }

    /// Whether `resource` is the Fabric resource of some cloud.
    pub(crate) fn is_fabric_resource(resource: &str) -> bool {
        SimCloud::ALL
            .iter()
            .any(|cloud| cloud.fabric_resource() == Some(resource))
    }

    /// Whether `resource` is the Power BI resource of some cloud.
    pub(crate) fn is_power_bi_resource(resource: &str) -> bool {
        SimCloud::ALL
            .iter()
            .any(|cloud| cloud.power_bi_resource() == resource)
    }

    /// Whether `resource` is the Key Vault resource of some cloud.
    pub(crate) fn is_key_vault_resource(resource: &str) -> bool {
        SimCloud::ALL
            .iter()
            .any(|cloud| cloud.key_vault_resource() == resource)
    }
}
