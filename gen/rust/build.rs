// Compiles threegen's protos into Rust types with prost (needs `protoc` on PATH).
fn main() -> std::io::Result<()> {
    let protos = [
        "threegen/common/v1/common.proto",
        "threegen/imagegen/v1/imagegen.proto",
        "threegen/recon/v1/recon.proto",
        "threegen/render/v1/render.proto",
        "threegen/gateway/v1/gateway.proto",
    ];
    // Read at run time: a build script compiled for one checkout may be reused from a shared
    // target directory by another, and a compile-time path would point at the first.
    let manifest = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let root = std::path::Path::new(&manifest).join("../../protos");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    prost_build::compile_protos(&protos.map(|p| root.join(p)), &[root])
}
