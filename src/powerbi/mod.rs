//! The Power BI REST API itself, beyond the token: the access probe and embed tokens.
//!
//! Entra issuing a token proves the app and its credential; it does not prove that Power BI
//! accepts the token. A customer's Fabric admin can leave "Service principals can use Fabric
//! APIs" off, or the service principal can miss the allowed security group or the workspace, and
//! every API call then fails with 401 `PowerBINotAuthorizedException` while the token refreshes
//! happily. The probe makes that visible per tenant, before the application's users see it.
//!
//! Embed tokens are what "app owns data" backends hand to browsers. They expire too, never later
//! than the Entra token they were made with, so they are kept fresh here, next to it.
//!
//! # Files
//!
//! * `probe.rs`: the probe call and the classification of its answer (embed token failures are
//!   classified the same way).
//! * `embed.rs`: embed tokens: the `GenerateToken` request, the answer, the token file.

pub mod embed;
pub mod probe;
