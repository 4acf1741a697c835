//! The mesh's data plane: a sidecar proxy configured with Envoy's xDS v3
//! resources.
//!
//! Data flows one way: [`listener`] (accept, original destination,
//! chain choice) → [`http`] or [`tcp`] (the protocols; routing tables in
//! [`config`]) → [`upstream`] (pooled connections). They read [`state`]
//! (the configuration in force, counters, drain) and count through
//! [`telemetry`]. Around them, and never imported by them:
//!
//! - [`server`]: workers, binding listeners as configurations change;
//! - [`xds`]: the ADS client that follows pilot; [`admin`]: Envoy-style
//!   admin, metrics and health ports;
//! - [`config`]: xDS resources → lookup-ready tables ([`config::Snapshot`]),
//!   refusing any field mesh-proxy does not apply;
//! - [`capture`]: the pod's packet redirection (`mesh-proxy init`);
//!   [`podinfo`]: the pod's labels from the downward API;
//! - [`memory`]: resident size kept to the serving working set.

pub mod admin;
pub mod capture;
pub mod config;
pub mod framing;
pub mod http;
pub mod identity;
pub mod listener;
pub mod orig_dst;
pub mod podinfo;
pub mod server;
pub mod sniff;
pub mod state;
pub mod tcp;
pub mod telemetry;
pub mod transport;
pub mod upstream;
pub mod xds;
