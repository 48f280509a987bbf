//! Compiles the gRPC contract with protox, so that no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "onbehalf/v1/common.proto",
        "onbehalf/v1/users.proto",
        "onbehalf/v1/accounts.proto",
        "onbehalf/v1/invitations.proto",
        "onbehalf/v1/access.proto",
        "onbehalf/v1/catalog.proto",
        "onbehalf/v1/hosting.proto",
        "onbehalf/v1/billing.proto",
        "onbehalf/v1/notifications.proto",
        "onbehalf/v1/audit.proto",
        "onbehalf/v1/history.proto",
    ];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["."])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptor_path = out.join("onbehalf_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor_path)
        .skip_protoc_run()
        .compile_fds(descriptors)?;
    Ok(())
}
