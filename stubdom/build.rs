//! Links the stub domain as a static, non-PIE, freestanding ELF laid out by
//! `linker.ld` (at `ferrite_abi::IMAGE_BASE`). The arguments apply to this
//! crate's binary only (`rustc-link-arg-bins`), so host tools built from
//! the same workspace and target are unaffected.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=linker.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,--no-dynamic-linker",
        "-Wl,--gc-sections",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/linker.ld");
}
