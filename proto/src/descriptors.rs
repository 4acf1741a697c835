//! The descriptor pools of Envoy's xDS API, trimmed from the descriptor set
//! `envoy-types` was generated from (see `examples/trim_descriptors.rs`),
//! so names and field numbers match the Rust types exactly. Two sets:
//!
//! - [`Schema::Xds`]: every message the mesh reads and writes as JSON/YAML
//!   and every type they reach (pilot, meshctl): 140 KB.
//! - [`Schema::Proxy`]: mesh-proxy's: the types the fields it applies reach
//!   (`types::PROXY_FIELDS`); every other field keeps its name and number
//!   with the stand-in type [`NOT_SUPPORTED`], so it is still refused by
//!   name: 49 KB, and a fraction of the memory once decoded.
//!
//! Both are lean (no comments, no options but `map_entry` and `packed`).
//! A decoded pool still costs megabytes, and a proxy needs one only while
//! it reads configuration; so it is shared while someone holds it and
//! freed when the last holder lets go, rather than kept for the process's
//! life.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use prost_reflect::{DescriptorPool, MessageDescriptor};

/// The stand-in type of the message fields mesh-proxy does not apply, in
/// [`Schema::Proxy`].
pub const NOT_SUPPORTED: &str = "mesh.proxy.NotSupported";
/// The stand-in type of its enum fields.
pub const NOT_SUPPORTED_ENUM: &str = "mesh.proxy.NotSupportedEnum";

/// Which descriptor set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    /// Every xDS type the mesh reads or writes.
    Xds,
    /// What mesh-proxy applies; other fields stand in, by name.
    Proxy,
}

static XDS: Mutex<Weak<DescriptorPool>> = Mutex::new(Weak::new());
static PROXY: Mutex<Weak<DescriptorPool>> = Mutex::new(Weak::new());
static KEPT: [OnceLock<Arc<DescriptorPool>>; 2] = [OnceLock::new(), OnceLock::new()];

impl Schema {
    /// The decoded pool, shared with its other holders.
    pub fn pool(self) -> Arc<DescriptorPool> {
        let (cache, bytes): (&Mutex<Weak<DescriptorPool>>, &[u8]) = match self {
            Schema::Xds => (&XDS, include_bytes!("../descriptors/xds.bin")),
            Schema::Proxy => (&PROXY, include_bytes!("../descriptors/proxy.bin")),
        };
        let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cached.upgrade() {
            return p;
        }
        let p = Arc::new(DescriptorPool::decode(bytes).expect("the descriptor sets are valid"));
        *cached = Arc::downgrade(&p);
        p
    }

    /// The descriptor of message type `T` (it keeps the pool alive while
    /// held).
    pub fn message<T: prost::Name>(self) -> MessageDescriptor {
        let name = T::full_name();
        self.pool()
            .get_message_by_name(&name)
            .unwrap_or_else(|| panic!("{name} is in the {self:?} descriptor set"))
    }
}

/// Keeps `schema`'s pool decoded for the rest of the process: for
/// processes that read or write xDS JSON all the time (pilot, tests,
/// fuzzers), where decoding it on each use would cost more than the memory.
pub fn keep_loaded(schema: Schema) {
    KEPT[schema as usize].get_or_init(|| schema.pool());
}
