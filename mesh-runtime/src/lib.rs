//! Process plumbing every mesh server shares (mesh-proxy, mesh-pilot,
//! mesh-inject, mesh-ca): [`log`] — `tracing` set up once, with levels
//! changeable at run time; [`watch`] — following a file as it changes.

pub mod log;
pub mod watch;
