//! Generates the mesh's own gRPC services (today: mesh-ca's) from
//! `proto/`, with a pure-Rust protobuf compiler so no `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/mesh/ca/v1/ca.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
