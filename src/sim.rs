//! Placeholder, replaced by the simulated Entra ID.
#![allow(missing_docs, dead_code)]
use std::time::Duration;
pub struct SimEntra;
impl SimEntra {
    pub async fn start() -> std::io::Result<SimEntra> { Ok(SimEntra) }
    pub fn authority_host(&self) -> String { String::new() }
    pub fn add_tenant(&self, _tenant_id: &str, _tenant: SimTenant) {}
}
pub struct SimTenant;
impl SimTenant { pub fn new(_app: SimApp, _lifetime: Duration) -> Self { SimTenant } }
pub struct SimApp { pub client_id: String, pub secret: String, pub secret_expired: bool }
