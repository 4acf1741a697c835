//! The mesh's control plane.
//!
//! Today it holds the rule store ([`store`]): the durable, watchable home of
//! the rules users write with `meshctl create/replace/delete`. Translation of
//! rules and registries into xDS, and the ADS server, arrive with the pilot
//! issue.

pub mod store;
