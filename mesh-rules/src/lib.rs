//! The mesh's shared model, free of I/O.
//!
//! - [`rules`]: the rule kinds of Istio 0.4 (`RouteRule`,
//!   `DestinationPolicy`, `EgressRule`), accepted under
//!   `config.istio.io/v1alpha2` exactly as Istio's users wrote them, and
//!   under the mesh's own group `config.mesh.dev/v1alpha1` with the same
//!   schema.
//! - [`load()`]: multi-document YAML/JSON to validated rules, with every
//!   problem reported as `file:line:column: document N: field.path: message`.
//! - [`registry`]: services, ports, workloads and host-name rules, shared by
//!   pilot (which builds configuration from them) and proxy.
//! - [`support`]: the fields the mesh does not act on yet, refused by
//!   [`load()`] rather than stored and ignored.
//!
//! ```
//! use mesh_rules::{Source, load};
//! let text = "apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata:\n  name: r\nspec:\n  destination:\n    name: svcb\n  route:\n  - labels: {version: v0.1}\n    weight: 60\n  - labels: {version: v0.2}\n    weight: 30\n";
//! let err = load(&[Source { name: "r.yaml", text }]).unwrap_err();
//! assert_eq!(err.to_string(), "r.yaml:8:3: document 1: spec.route: weights sum to 90; they must sum to 100");
//! ```

mod check;
pub mod convert;
mod diagnostic;
mod duration;
mod error;
pub mod identity;
mod load;
pub mod mesh_config;
pub mod names;
mod path;
pub mod registry;
pub mod rules;
pub mod support;
mod support_networking;
pub mod upgrade;
pub mod yaml;

pub use check::Checker;
pub use diagnostic::{Diagnostic, Diagnostics, Position};
pub use duration::Duration;
pub use error::FieldError;
pub use load::{ForeignObject, Loaded, Located, Origin, Source, load};
pub use path::{FieldPath, Segment};
pub use rules::{Kind, Metadata, Rule, RuleKey, Spec};
