// Same link setup as the solvers crate (see solvers/build.rs), plus the small C++ shim for
// bf16 autocast, compiled against the headers of the libtorch that torch-sys found.
include!("solvers/link_libtorch.rs");

fn main() {
    link_libtorch();
    shim();
}

fn shim() {
    println!("cargo:rerun-if-changed=src/shim/autocast.cpp");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its libtorch folder");
    let inc = std::path::Path::new(&lib).join("../include");
    cc::Build::new()
        .cpp(true)
        .file("src/shim/autocast.cpp")
        .include(&inc)
        .include(inc.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .warnings(false)
        .compile("scoreflow_shim");
}
