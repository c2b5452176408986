//! Generates the gRPC code from `proto/` with protox (a protobuf compiler in Rust), so no
//! system `protoc` is needed, and writes the descriptor set the reflection service serves.

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/nextbest/v1/values.proto",
        "proto/nextbest/v1/decision.proto",
        "proto/nextbest/v1/customer.proto",
        "proto/nextbest/v1/admin.proto",
        "proto/nextbest/v1/probe.proto",
    ];
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("nextbest_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
