//! Regenerates `proto/descriptors/`, from the descriptor set that
//! `envoy-types` was generated from (so names and field numbers match the
//! Rust types exactly):
//! - `xds.bin`: every Envoy xDS message the mesh reads and writes as
//!   JSON/YAML, with every type they reach (pilot, meshctl);
//! - `proxy.bin`: mesh-proxy's: the types its applied fields
//!   (`types::PROXY_FIELDS`) reach; every other field keeps its name and
//!   number with a stand-in type, `mesh.proxy.NotSupported` (an int32 for
//!   an enum), so it is still refused by name, in a fraction of the memory.
//!
//! ```sh
//! cargo run -p mesh-proto --example trim_descriptors -- \
//!   ~/.cargo/registry/src/*/envoy-types-0.7.7/src/generated/types.bin proto/descriptors
//! ```

use std::collections::BTreeSet;

use prost::Message;

/// What mesh-proxy reads and writes besides the xDS resources and typed
/// configs: bootstraps, and its `/config_dump`.
const PROXY_ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.admin.v3.ConfigDump",
    "envoy.admin.v3.ListenersConfigDump",
    "envoy.admin.v3.ClustersConfigDump",
    "envoy.admin.v3.RoutesConfigDump",
    "envoy.admin.v3.EndpointsConfigDump",
];

/// Messages the full set keeps with every type they reach, besides the
/// xDS resource types, the typed configs and [`PROXY_ROOTS`].
const OTHER_ROOTS: &[&str] = &["envoy.service.discovery.v3.DiscoveryRequest"];

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

/// Whether a field's type is kept (else it gets a stand-in type).
type FieldFilter<'a> = &'a dyn Fn(&prost_reflect::FieldDescriptor) -> bool;

/// Every message and enum reachable from `roots` through the fields
/// `follow` keeps (a nested type brings its enclosing messages along,
/// which hold it).
fn reachable(
    pool: &prost_reflect::DescriptorPool,
    roots: &[&str],
    follow: FieldFilter<'_>,
) -> BTreeSet<String> {
    use prost_reflect::Kind;
    let mut seen = BTreeSet::new();
    let mut stack: Vec<prost_reflect::MessageDescriptor> = roots
        .iter()
        .map(|m| {
            pool.get_message_by_name(m)
                .unwrap_or_else(|| panic!("{m} is not in the input"))
        })
        .collect();
    while let Some(m) = stack.pop() {
        if !seen.insert(m.full_name().to_owned()) {
            continue;
        }
        if let Some(parent) = m.parent_message() {
            stack.push(parent);
        }
        for f in m.fields().filter(|f| follow(f)) {
            match f.kind() {
                Kind::Message(inner) => stack.push(inner),
                Kind::Enum(e) => {
                    seen.insert(e.full_name().to_owned());
                    if let Some(parent) = e.parent_message() {
                        stack.push(parent);
                    }
                }
                _ => {}
            }
        }
    }
    seen
}

/// The stand-in type of fields mesh-proxy does not apply.
const NOT_SUPPORTED: &str = "mesh.proxy.NotSupported";
const NOT_SUPPORTED_FILE: &str = "mesh/proxy/not_supported.proto";

fn not_supported_file() -> prost_types::FileDescriptorProto {
    prost_types::FileDescriptorProto {
        name: Some(NOT_SUPPORTED_FILE.into()),
        package: Some("mesh.proxy".into()),
        message_type: vec![prost_types::DescriptorProto {
            name: Some("NotSupported".into()),
            ..Default::default()
        }],
        enum_type: vec![prost_types::EnumDescriptorProto {
            name: Some("NotSupportedEnum".into()),
            value: vec![prost_types::EnumValueDescriptorProto {
                name: Some("NOT_SUPPORTED_ENUM_UNSET".into()),
                number: Some(0),
                options: None,
            }],
            ..Default::default()
        }],
        syntax: Some("proto3".into()),
        ..Default::default()
    }
}

/// `m` (named `full`, described by `desc`) without the nested types nobody
/// reaches, its fields that `follow` refuses given the stand-in type.
fn prune_message(
    mut m: prost_types::DescriptorProto,
    desc: &prost_reflect::MessageDescriptor,
    keep: &BTreeSet<String>,
    follow: FieldFilter<'_>,
) -> prost_types::DescriptorProto {
    use prost_types::field_descriptor_proto::Type;
    let nested = std::mem::take(&mut m.nested_type);
    m.nested_type = prune_messages(nested, desc.child_messages(), keep, follow);
    m.enum_type
        .retain(|e| keep.contains(&format!("{}.{}", desc.full_name(), e.name())));
    for f in &mut m.field {
        let Some(fd) = desc.get_field(f.number() as u32) else {
            continue;
        };
        if follow(&fd) {
            continue;
        }
        match f.r#type() {
            Type::Message | Type::Group => {
                f.set_type(Type::Message);
                f.type_name = Some(format!(".{NOT_SUPPORTED}"));
            }
            Type::Enum => f.type_name = Some(format!(".{NOT_SUPPORTED}Enum")),
            _ => {}
        }
    }
    m
}

/// The messages of `list` (described by `descs`) that `keep` holds, pruned.
fn prune_messages(
    list: Vec<prost_types::DescriptorProto>,
    descs: impl Iterator<Item = prost_reflect::MessageDescriptor>,
    keep: &BTreeSet<String>,
    follow: FieldFilter<'_>,
) -> Vec<prost_types::DescriptorProto> {
    let descs: Vec<_> = descs.collect();
    list.into_iter()
        .filter_map(|m| {
            let desc = descs.iter().find(|d| d.name() == m.name())?;
            keep.contains(desc.full_name())
                .then(|| prune_message(m, desc, keep, follow))
        })
        .collect()
}

/// The file with only the types in `keep` (fields as `follow` says),
/// importing only the files that define the types its fields name. `None`
/// when nothing in it is kept.
fn prune_file(
    f: &prost_reflect::FileDescriptor,
    keep: &BTreeSet<String>,
    follow: FieldFilter<'_>,
) -> Option<prost_types::FileDescriptorProto> {
    let mut p = lean(f.file_descriptor_proto().clone());
    let messages = std::mem::take(&mut p.message_type);
    p.message_type = prune_messages(messages, f.messages(), keep, follow);
    let package = f.package_name();
    p.enum_type.retain(|e| {
        let full = if package.is_empty() {
            e.name().to_owned()
        } else {
            format!("{package}.{}", e.name())
        };
        keep.contains(&full)
    });
    p.service.clear();
    if p.message_type.is_empty() && p.enum_type.is_empty() {
        return None;
    }
    let mut needed = BTreeSet::new();
    for m in f.messages().flat_map(all_messages) {
        if !keep.contains(m.full_name()) {
            continue;
        }
        for field in m.fields() {
            let file = match field.kind() {
                prost_reflect::Kind::Message(_) | prost_reflect::Kind::Enum(_)
                    if !follow(&field) =>
                {
                    needed.insert(NOT_SUPPORTED_FILE.to_owned());
                    continue;
                }
                prost_reflect::Kind::Message(t) if follow(&field) => t.parent_file(),
                prost_reflect::Kind::Enum(e) if follow(&field) => e.parent_file(),
                _ => continue,
            };
            if file.name() != f.name() {
                needed.insert(file.name().to_owned());
            }
        }
    }
    p.dependency.retain(|d| needed.contains(d));
    if needed.contains(NOT_SUPPORTED_FILE) {
        p.dependency.push(NOT_SUPPORTED_FILE.into());
    }
    p.public_dependency.clear();
    p.weak_dependency.clear();
    Some(p)
}

/// `m` and every message nested in it.
fn all_messages(m: prost_reflect::MessageDescriptor) -> Vec<prost_reflect::MessageDescriptor> {
    let mut out = vec![m.clone()];
    for n in m.child_messages() {
        out.extend(all_messages(n));
    }
    out
}

/// The set of `roots` and what `follow` reaches, as bytes; checked to
/// decode on its own.
fn trimmed(
    pool: &prost_reflect::DescriptorPool,
    roots: &[&str],
    follow: FieldFilter<'_>,
    extra: Option<prost_types::FileDescriptorProto>,
) -> (Vec<u8>, String) {
    let keep = reachable(pool, roots, follow);
    // Files in the pool's order, which lists dependencies first.
    let files: Vec<_> = extra
        .into_iter()
        .chain(pool.files().filter_map(|f| prune_file(&f, &keep, follow)))
        .collect();
    let summary = format!("{} types in {} files", keep.len(), files.len());
    let bytes = prost_types::FileDescriptorSet { file: files }.encode_to_vec();
    prost_reflect::DescriptorPool::decode(bytes.as_slice()).expect("the trimmed set is consistent");
    (bytes, summary)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output] = args.as_slice() else {
        eprintln!("usage: trim_descriptors TYPES_BIN OUTPUT_DIR");
        std::process::exit(2);
    };
    let pool =
        prost_reflect::DescriptorPool::decode(std::fs::read(input).expect("read input").as_slice())
            .expect("a FileDescriptorSet");
    let out = std::path::Path::new(output);
    let resources = mesh_proto::types::XdsType::PUSH_ORDER.map(|t| t.message_name());
    let mut roots: Vec<&str> = resources.to_vec();
    roots.extend(mesh_proto::types::TYPED_CONFIGS);
    let mut all_roots = roots.clone();
    all_roots.extend(PROXY_ROOTS);
    all_roots.extend(OTHER_ROOTS);
    let (xds, summary) = trimmed(&pool, &all_roots, &|_| true, None);
    std::fs::write(out.join("xds.bin"), xds).expect("write xds.bin");
    println!("xds.bin: {summary}");
    // mesh-proxy reads bootstraps and renders /config_dump; the dump types
    // and well-known types keep every field.
    roots.extend(PROXY_ROOTS);
    let applied = |f: &prost_reflect::FieldDescriptor| {
        let holder = f.parent_message();
        let name = holder.full_name();
        name.starts_with("google.protobuf.")
            || PROXY_ROOTS.contains(&name) && name.starts_with("envoy.admin.")
            || mesh_proto::types::PROXY_FIELDS.contains(&format!("{name}.{}", f.name()).as_str())
            || holder.is_map_entry()
    };
    let (proxy, summary) = trimmed(&pool, &roots, &applied, Some(not_supported_file()));
    std::fs::write(out.join("proxy.bin"), proxy).expect("write proxy.bin");
    println!("proxy.bin: {summary}");
}
