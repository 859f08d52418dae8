//! Sovereign clouds: which Entra authority and which Power BI (and Fabric) resource belong
//! together.
//!
//! A token for the wrong cloud's resource is useless, and a tenant in the US Government cloud is
//! "not found" by the public authority, so the pair is chosen by one name rather than two URLs
//! that can drift apart. Values from the Power BI national-clouds documentation (reference §7).

use serde::Deserialize;

/// A Power BI cloud.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Commercial Power BI.
    #[default]
    Public,
    /// US Government Community Cloud: commercial Entra, government Power BI.
    Gcc,
    /// US GCC High (DoDCON endpoints).
    Gcchigh,
    /// US Department of Defense.
    Dod,
    /// China, operated by 21Vianet.
    China,
}

impl Cloud {
    /// The name as written in the configuration (`cloud = "gcc"`), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::Gcc => "gcc",
            Cloud::Gcchigh => "gcchigh",
            Cloud::Dod => "dod",
            Cloud::China => "china",
        }
    }

    /// The Entra authority host, without a trailing slash.
    pub fn authority_host(self) -> &'static str {
        match self {
            Cloud::Public | Cloud::Gcc => "https://login.microsoftonline.com",
            Cloud::Gcchigh | Cloud::Dod => "https://login.microsoftonline.us",
            Cloud::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The Power BI App ID URI (v1 `resource`; v2 scope is this plus `/.default`).
    pub fn power_bi_resource(self) -> &'static str {
        match self {
            Cloud::Public => "https://analysis.windows.net/powerbi/api",
            Cloud::Gcc => "https://analysis.usgovcloudapi.net/powerbi/api",
            Cloud::Gcchigh => "https://high.analysis.usgovcloudapi.net/powerbi/api",
            Cloud::Dod => "https://mil.analysis.usgovcloudapi.net/powerbi/api",
            Cloud::China => "https://analysis.chinacloudapi.cn/powerbi/api",
        }
    }

    /// The Power BI REST API root, without a trailing slash (reference §7; GCC High is taken to
    /// share DoDCON's `high.` endpoints, as its resource does).
    pub(crate) fn power_bi_api(self) -> &'static str {
        match self {
            Cloud::Public => "https://api.powerbi.com",
            Cloud::Gcc => "https://api.powerbigov.us",
            Cloud::Gcchigh => "https://api.high.powerbigov.us",
            Cloud::Dod => "https://api.mil.powerbigov.us",
            Cloud::China => "https://api.powerbi.cn",
        }
    }

    /// The Microsoft Fabric App ID URI (v1 `resource`; v2 scope is this plus `/.default`), in
    /// the clouds Fabric exists in: the public cloud only. Microsoft's Fabric region list names
    /// Azure public regions alone, and Fabric has not reached GCC, GCC High, DoD or 21Vianet.
    /// Public so that `tests/clouds.rs` can hold the simulator's table to it.
    pub fn fabric_resource(self) -> Option<&'static str> {
        match self {
            Cloud::Public => Some("https://api.fabric.microsoft.com"),
            Cloud::Gcc | Cloud::Gcchigh | Cloud::Dod | Cloud::China => None,
        }
    }

    /// The Fabric REST API root, without a trailing slash, where Fabric exists (see
    /// [`Cloud::fabric_resource`]).
    pub(crate) fn fabric_api(self) -> Option<&'static str> {
        self.fabric_resource()
            .map(|_| "https://api.fabric.microsoft.com")
    }

    /// The Azure Key Vault resource (v1 `resource`; v2 scope is this plus `/.default`) whose
    /// tokens this cloud's vaults accept (reference §10). GCC runs on the commercial cloud.
    /// Public so that `tests/clouds.rs` can hold the simulator's table to it.
    pub fn key_vault_resource(self) -> &'static str {
        match self {
            Cloud::Public | Cloud::Gcc => "https://vault.azure.net",
            Cloud::Gcchigh | Cloud::Dod => "https://vault.usgovcloudapi.net",
            Cloud::China => "https://vault.azure.cn",
        }
    }

    /// Every cloud, for checks that a resource is one of theirs.
    pub const ALL: [Cloud; 5] = [
        Cloud::Public,
        Cloud::Gcc,
        Cloud::Gcchigh,
        Cloud::Dod,
        Cloud::China,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gcc_uses_commercial_entra_but_government_power_bi() {
        assert_eq!(Cloud::Gcc.authority_host(), Cloud::Public.authority_host());
        assert_ne!(
            Cloud::Gcc.power_bi_resource(),
            Cloud::Public.power_bi_resource()
        );
        assert!(Cloud::Dod.power_bi_resource().starts_with("https://mil."));
    }
}
