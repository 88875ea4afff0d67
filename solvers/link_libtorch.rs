// Link libtorch so that one binary runs on CUDA when a GPU is present and on the CPU otherwise.
//
// rustc links with `--as-needed`, which drops `libtorch_cuda.so` (nothing references its
// symbols directly) and makes CUDA look absent at run time. We force it in with
// `--no-as-needed` and add an rpath to torch's `lib/`, so no `LD_LIBRARY_PATH` is needed.
// torch-sys reports the library folder through its `links = "tch"` metadata.
fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        let dir = std::path::Path::new(&lib);
        if dir.join("libtorch_cuda.so").exists() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
            println!("cargo:rustc-link-arg=-L{lib}");
            println!("cargo:rustc-link-arg=-ltorch_cuda");
            if dir.join("libc10_cuda.so").exists() {
                println!("cargo:rustc-link-arg=-lc10_cuda");
            }
            println!("cargo:rustc-link-arg=-Wl,--as-needed");
        }
    }
}
