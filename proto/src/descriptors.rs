//! The descriptor pool of Envoy's xDS API: the messages the mesh reads and
//! writes as JSON/YAML and everything they import, trimmed from the
//! descriptor set `envoy-types` was generated from (see
//! `examples/trim_descriptors.rs`), so names and field numbers match the
//! Rust types exactly.
//!
//! The set is kept lean (no comments, no options but `map_entry` and
//! `packed`: 190 KB, was 1.2 MB). The decoded pool is still a few MB, and a proxy needs it only while it
//! reads configuration; so it is shared while someone holds it and freed
//! when the last holder lets go, rather than kept for the process's life.

use std::sync::{Arc, Mutex, Weak};

use prost_reflect::{DescriptorPool, MessageDescriptor};

static POOL: Mutex<Weak<DescriptorPool>> = Mutex::new(Weak::new());

/// Every xDS message, enum and service, with their field names.
pub fn pool() -> Arc<DescriptorPool> {
    let mut cached = POOL.lock().expect("descriptor pool lock");
    if let Some(p) = cached.upgrade() {
        return p;
    }
    let bytes = include_bytes!("../descriptors/xds.bin");
    let p = Arc::new(
        DescriptorPool::decode(bytes.as_slice()).expect("the xDS descriptor set is valid"),
    );
    *cached = Arc::downgrade(&p);
    p
}

static KEPT: std::sync::OnceLock<Arc<DescriptorPool>> = std::sync::OnceLock::new();

/// Keeps the pool decoded for the rest of the process: for processes that
/// read or write xDS JSON all the time (pilot, tests, fuzzers), where
/// decoding it on each use would cost more than the memory.
pub fn keep_loaded() {
    KEPT.get_or_init(pool);
}

/// The descriptor of message type `T` (it keeps the pool alive while held).
pub fn message<T: prost::Name>() -> MessageDescriptor {
    let name = T::full_name();
    pool()
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is in the xDS descriptor set"))
}
