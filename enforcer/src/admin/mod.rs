//! Admin HTTP API of the enforcer agent and its CLI client.
//!
//! - [`server`]: the agent's listener (`/debug/registryz`, `/metrics`, `/healthz`, `/readyz`).
//! - [`client`]: `enforcer registry`'s side: fetch registryz and render the
//!   `istioctl proxy-config endpoint`-style table.
//! - [`model`]: the JSON documents both sides share.

pub mod client;
pub mod model;
pub mod server;

pub use client::{ClientError, fetch_registryz, fetch_registryz_filtered, format_endpoint_table};
pub use model::{EndpointView, MapStats, PortView, Registryz, ServiceView, rfc3339_utc};
pub use server::{AdminSource, bind, serve};

#[cfg(test)]
mod tests;
