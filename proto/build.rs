//! Compiles `proto/distkv/v1/*.proto` with protox (a pure-Rust protobuf compiler), so no
//! `protoc` has to be installed, and generates tonic clients and servers from it.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/distkv/v1/distkv.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // Kept for gRPC server reflection.
    std::fs::write(
        out.join("distkv_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().bytes(".").compile_fds(fds)?;
    Ok(())
}
