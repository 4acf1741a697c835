//! Process plumbing every mesh server shares (mesh-proxy, mesh-pilot,
//! mesh-inject, mesh-ca): [`log`] — `tracing` set up once, with levels
//! changeable at run time; [`watch`] — following a file as it changes;
//! [`poll`] — waiting for a condition without a readiness signal;
//! [`signal`] — when to stop.

pub mod log;
pub mod memory;
pub mod poll;
pub mod signal;
pub mod watch;
