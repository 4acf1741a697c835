//! The mesh's control plane.
//!
//! - [`store`]: the durable, watchable home of the rules users write with
//!   `meshctl create/replace/delete`.
//! - [`translate`]: registry + rules → the xDS resources one proxy needs
//!   (pure functions).
//!
//! The ADS server and the registries arrive with the rest of the pilot issue.

pub mod registry;
pub mod store;
pub mod translate;
