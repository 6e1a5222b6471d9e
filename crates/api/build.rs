//! Generates the gRPC code for proto/weft/v1 with a vendored protoc, so building weft needs no
//! system protobuf packages. `PROTOC` in the environment overrides the vendored binary.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let files: Vec<PathBuf> = ["types", "network", "endpoint", "node", "cluster", "watch", "security"]
        .iter()
        .map(|name| proto_root.join(format!("weft/v1/{name}.proto")))
        .collect();
    let agent = vec![proto_root.join("weft/agent/v1/agent.proto")];
    for file in files.iter().chain(&agent) {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Maps as BTreeMap: deterministic iteration, so encoded messages are stable.
        .btree_map(".")
        // Served by gRPC server reflection so `grpcurl` works without .proto files.
        .file_descriptor_set_path(out_dir.join("weft_v1_descriptor.bin"))
        .compile_with_config(config, &files, std::slice::from_ref(&proto_root))?;

    // The node agent's local API: a package of its own, so controllers' reflection never
    // lists a service they do not serve.
    let mut config = tonic_prost_build::Config::new();
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    tonic_prost_build::configure().compile_with_config(config, &agent, &[proto_root])?;
    Ok(())
}
