//! The mesh's data plane: a sidecar proxy configured with Envoy's xDS v3
//! resources.
//!
//! - [`config`]: xDS resources → lookup-ready routing tables ([`config::Snapshot`]),
//!   refusing any field mesh-proxy does not apply.
//! - [`server`]: workers, listeners, drain; [`http`] and [`tcp`]: the two
//!   data paths; [`upstream`]: pooled upstream connections; [`admin`]: Envoy-style admin endpoints; [`stats`]: counters.
//! - [`xds`]: the ADS client that follows pilot.
//! - [`memory`]: resident size kept to the serving working set.

pub mod admin;
pub mod config;
pub mod framing;
pub mod http;
pub mod init;
pub mod memory;
pub mod orig_dst;
pub mod server;
pub mod sniff;
pub mod stats;
pub mod tcp;
pub mod upstream;
pub mod xds;
