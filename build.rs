// Same link setup as the solvers crate (see solvers/build.rs), plus small C++ shims compiled
// against the headers of the libtorch that torch-sys found: bf16 autocast and the multi-tensor
// optimizer kernels (always), and CUDA graphs and peak-memory statistics (src/shim/cuda.cpp)
// where the CUDA runtime headers are present (PyPI's nvidia-cuda-runtime and nvidia-cuda-crt,
// which scripts/env.sh installs); without them the binary is built with
// `cfg(scoreflow_cuda_shim)` off and runs eagerly.
include!("solvers/link_libtorch.rs");

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rustc-check-cfg=cfg(scoreflow_cuda_shim)");
    println!("cargo:rerun-if-changed=src/shim/status.h");
    link_libtorch();
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys reports its libtorch folder");
    let inc = Path::new(&lib).join("../include");
    shim("autocast", &inc, &[]);
    shim("optim", &inc, &[]);
    if let Some(cuda) = cuda_include(Path::new(&lib)) {
        if Path::new(&lib).join("libtorch_cuda.so").exists() {
            shim("cuda", &inc, &[cuda]);
            println!("cargo:rustc-cfg=scoreflow_cuda_shim");
        }
    } else {
        println!("cargo:warning=CUDA runtime headers not found next to torch; CUDA graphs and GPU peak memory are left out (run scripts/env.sh)");
    }
}

/// `nvidia/cu13/include` (or `cuda_runtime`'s older layout) in the site-packages holding torch,
/// when it has both `cuda_runtime_api.h` and `crt/host_config.h`; `SCOREFLOW_CUDA_INCLUDE` wins.
fn cuda_include(torch_lib: &Path) -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=SCOREFLOW_CUDA_INCLUDE");
    let mut dirs: Vec<PathBuf> = std::env::var_os("SCOREFLOW_CUDA_INCLUDE")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    let site = torch_lib.join("../..");
    dirs.push(site.join("nvidia/cu13/include"));
    dirs.push(site.join("nvidia/cuda_runtime/include"));
    dirs.into_iter().find(|d| {
        println!(
            "cargo:rerun-if-changed={}",
            d.join("crt/host_config.h").display()
        );
        d.join("cuda_runtime_api.h").exists() && d.join("crt/host_config.h").exists()
    })
}

fn shim(name: &str, inc: &Path, extra: &[PathBuf]) {
    let file = format!("src/shim/{name}.cpp");
    println!("cargo:rerun-if-changed={file}");
    let mut b = cc::Build::new();
    b.cpp(true)
        .file(&file)
        .include(inc)
        .include(inc.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .warnings(false);
    for e in extra {
        b.include(e);
    }
    b.compile(&format!("scoreflow_{name}_shim"));
}
