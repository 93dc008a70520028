// Compiles threegen's protos into Rust types with prost (needs `protoc` on PATH).
fn main() -> std::io::Result<()> {
    let protos = [
        "threegen/common/v1/common.proto",
        "threegen/imagegen/v1/imagegen.proto",
        "threegen/recon/v1/recon.proto",
        "threegen/render/v1/render.proto",
        "threegen/gateway/v1/gateway.proto",
    ];
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../protos");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    prost_build::compile_protos(&protos.map(|p| root.join(p)), &[root])
}
