//! Arbitrary text as an Envoy bootstrap: reading it and building the
//! proxy's routing tables must refuse or accept, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mesh_proto::envoy::config::bootstrap::v3::Bootstrap;

fuzz_target!(|data: &[u8]| {
    // A proxy frees the pool after reading config; the fuzzer keeps it.
    mesh_proto::descriptors::keep_loaded(mesh_proto::descriptors::Schema::Proxy);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(b) = mesh_proto::json::from_yaml::<Bootstrap>(mesh_proto::descriptors::Schema::Proxy, text) {
        let _ = mesh_proxy::config::Snapshot::from_bootstrap(&b, None);
    }
});
