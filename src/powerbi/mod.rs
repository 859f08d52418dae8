//! The Power BI REST API itself, beyond the token: the access probe.
//!
//! Entra issuing a token proves the app and its credential; it does not prove that Power BI
//! accepts the token. A customer's Fabric admin can leave "Service principals can use Fabric
//! APIs" off, or the service principal can miss the allowed security group or the workspace, and
//! every API call then fails with 401 `PowerBINotAuthorizedException` while the token refreshes
//! happily. The probe makes that visible per tenant, before the application's users see it.
//!
//! # Files
//!
//! * `probe.rs`: the probe call and the classification of its answer.

pub mod probe;
