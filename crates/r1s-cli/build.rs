//! With the `tch` feature, torch-sys reports the libtorch directory it linked against
//! (`DEP_TCH_LIBTORCH_LIB`, from its `links = "tch"`); it goes into the rpath of this package's
//! binaries and tests, so that they find libtorch without `LD_LIBRARY_PATH`.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
