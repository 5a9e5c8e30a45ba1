//! Compiles `polyproto/**/*.proto` into `OUT_DIR` with a vendored `protoc`, so a fresh machine builds
//! with plain `cargo build`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "polyproto/common/v1/common.proto",
        "polyproto/identity/v1/identity.proto",
        "polyproto/session/v1/session.proto",
        "polyproto/discovery/v1/discovery.proto",
        "polyproto/events/v1/events.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    let mut config = prost_build::Config::new();
    // An explicit PROTOC wins (distribution builds); otherwise the vendored binary.
    if std::env::var_os("PROTOC").is_none() {
        config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    }
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(descriptors)
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
