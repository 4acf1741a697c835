//! The mesh's control plane.
//!
//! - [`store`]: the durable, watchable home of the rules users write with
//!   `meshctl create/replace/delete`.
//! - [`translate`]: registry + rules → the xDS resources one proxy needs
//!   (pure functions).
//!
//! - [`world`]: the inputs of translation (rules, registry, registered
//!   proxies), kept current and debounced.
//! - [`ads`]: the ADS server (State-of-the-World and Delta) and the sync
//!   status of every proxy; [`debug`]: its HTTP view.
//! - [`settings`]: the mesh's settings file, followed.

pub mod ads;
pub mod analyze;
pub mod debug;
pub mod registry;
pub mod settings;
pub mod store;
pub mod translate;
pub mod world;
