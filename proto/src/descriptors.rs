//! The descriptor pool of Envoy's xDS API: the messages the mesh reads and
//! writes as JSON/YAML and everything they import, trimmed from the
//! descriptor set `envoy-types` was generated from (see
//! `examples/trim_descriptors.rs`), so names and field numbers match the
//! Rust types exactly.

use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, MessageDescriptor};

static POOL: OnceLock<DescriptorPool> = OnceLock::new();

/// Every xDS message, enum and service, with their field names.
pub fn pool() -> &'static DescriptorPool {
    POOL.get_or_init(|| {
        let bytes = include_bytes!("../descriptors/xds.bin");
        DescriptorPool::decode(bytes.as_slice()).expect("the xDS descriptor set is valid")
    })
}

/// The descriptor of message type `T`.
pub fn message<T: prost::Name>() -> MessageDescriptor {
    let name = T::full_name();
    pool()
        .get_message_by_name(&name)
        .unwrap_or_else(|| panic!("{name} is in the xDS descriptor set"))
}
