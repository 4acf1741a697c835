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

/// Messages whose files (and their imports) are kept.
const ROOTS: &[&str] = &[
    "envoy.config.bootstrap.v3.Bootstrap",
    "envoy.config.listener.v3.Listener",
    "envoy.config.route.v3.RouteConfiguration",
    "envoy.config.cluster.v3.Cluster",
    "envoy.config.endpoint.v3.ClusterLoadAssignment",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.extensions.filters.http.router.v3.Router",
    "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector",
    "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector",
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
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
    let mut stack: Vec<prost_reflect::FileDescriptor> = ROOTS
        .iter()
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
