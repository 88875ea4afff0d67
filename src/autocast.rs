//! bf16 autocast through the C++ shim (`src/shim/autocast.cpp`): ops that autocast lists run
//! in bfloat16 (matmuls, convolutions), the rest (norms, reductions, losses) in float32.

use tch::Device;

extern "C" {
    fn scoreflow_autocast_bf16(device: i32, enabled: bool) -> bool;
    fn scoreflow_autocast_enter();
    fn scoreflow_autocast_exit();
}

/// Run `f` under bf16 autocast for `device` (CPU or CUDA).
pub fn bf16<T>(device: Device, f: impl FnOnce() -> T) -> T {
    let d = if device.is_cuda() { 1 } else { 0 };
    // SAFETY: plain calls into libtorch's thread-local autocast state; restored below.
    let prev = unsafe {
        let prev = scoreflow_autocast_bf16(d, true);
        scoreflow_autocast_enter();
        prev
    };
    let out = f();
    unsafe {
        scoreflow_autocast_exit();
        scoreflow_autocast_bf16(d, prev);
    }
    out
}
