//! Regenerates `proto/descriptors/xds.bin`: the descriptors of the Envoy xDS
//! messages the mesh reads and writes as JSON/YAML, with everything they
//! import, taken from the descriptor set that `envoy-types` was generated
//! from (so names and field numbers match the Rust types exactly).
//!
//! ```sh
//! cargo run -p mesh-proto --example trim_descriptors -- \
//!   ~/.cargo/registry/src/*/envoy-types-0.7.7/src/generated/types.bin proto/descriptors/xds.bin
//! ```

use std::collections::BTreeSet;

use prost::Message;

/// Messages whose files (and their imports) are kept, besides the xDS
/// resource types and the typed configs the mesh applies.
const OTHER_ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.admin.v3.ConfigDump",
    "envoy.admin.v3.ListenersConfigDump",
    "envoy.admin.v3.ClustersConfigDump",
    "envoy.admin.v3.RoutesConfigDump",
    "envoy.admin.v3.EndpointsConfigDump",
    "envoy.service.discovery.v3.DiscoveryRequest",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: trim_descriptors TYPES_BIN OUTPUT");
        std::process::exit(2);
    };
    let pool =
        prost_reflect::DescriptorPool::decode(std::fs::read(input).expect("read input").as_slice())
            .expect("a FileDescriptorSet");
    let mut keep = BTreeSet::new();
    let roots = mesh_proto::types::XdsType::PUSH_ORDER
        .iter()
        .map(|t| t.message_name())
        .chain(mesh_proto::types::TYPED_CONFIGS.iter().copied())
        .chain(OTHER_ROOTS.iter().copied());
    let mut stack: Vec<prost_reflect::FileDescriptor> = roots
        .map(|m| {
            pool.get_message_by_name(m)
                .unwrap_or_else(|| panic!("{m} not in {input}"))
                .parent_file()
        })
        .collect();
    while let Some(f) = stack.pop() {
        if keep.insert(f.name().to_owned()) {
            stack.extend(f.dependencies());
        }
    }
    // Files in the pool's order, which lists dependencies first.
    let files: Vec<_> = pool
        .files()
        .filter(|f| keep.contains(f.name()))
        .map(|f| f.file_descriptor_proto().clone())
        .collect();
    let set = prost_types::FileDescriptorSet { file: files };
    std::fs::write(output, set.encode_to_vec()).expect("write output");
    println!("{} of {} files kept", keep.len(), pool.files().len());
}
