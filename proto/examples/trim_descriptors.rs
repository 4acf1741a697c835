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
    // Written by pilot for Envoy sidecars (not applied by mesh-proxy).
    "envoy.config.trace.v3.ZipkinConfig",
];

/// Drops what reading and writing messages never uses: comments (source
/// info) and options (validation rules, annotations), except the two that
/// change how a message is read: `map_entry` and `packed`. Every mesh
/// process that decodes the pool holds less.
fn lean(mut f: prost_types::FileDescriptorProto) -> prost_types::FileDescriptorProto {
    fn message(m: &mut prost_types::DescriptorProto) {
        let map_entry = m.options.as_ref().and_then(|o| o.map_entry);
        m.options = map_entry.map(|e| prost_types::MessageOptions {
            map_entry: Some(e),
            ..Default::default()
        });
        for field in &mut m.field {
            let packed = field.options.as_ref().and_then(|o| o.packed);
            field.options = packed.map(|p| prost_types::FieldOptions {
                packed: Some(p),
                ..Default::default()
            });
        }
        for o in &mut m.oneof_decl {
            o.options = None;
        }
        for e in &mut m.enum_type {
            enumeration(e);
        }
        m.nested_type.iter_mut().for_each(message);
    }
    fn enumeration(e: &mut prost_types::EnumDescriptorProto) {
        e.options = None;
        for v in &mut e.value {
            v.options = None;
        }
    }
    f.source_code_info = None;
    f.options = None;
    f.message_type.iter_mut().for_each(message);
    f.enum_type.iter_mut().for_each(enumeration);
    for s in &mut f.service {
        s.options = None;
        for m in &mut s.method {
            m.options = None;
        }
    }
    f
}

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
        .map(|f| lean(f.file_descriptor_proto().clone()))
        .collect();
    let set = prost_types::FileDescriptorSet { file: files };
    std::fs::write(output, set.encode_to_vec()).expect("write output");
    println!("{} of {} files kept", keep.len(), pool.files().len());
}
