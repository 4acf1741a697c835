//! Writes Envoy's xDS API descriptor set to OUT_DIR, so the proxy can read
//! JSON/YAML bootstraps with `"@type"` Any fields and name unsupported
//! fields, without carrying a second copy of the generated types.

fn main() {
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    std::fs::write(
        out.join("xds-descriptors.bin"),
        xds_api::FILE_DESCRIPTOR_SET,
    )
    .expect("write descriptor set");
}
