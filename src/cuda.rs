//! CUDA graphs and peak GPU memory through the C++ shim (`src/shim/cuda.cpp`, built against
//! libtorch's `at::cuda::CUDAGraph` and caching allocator).
//!
//! A graph is captured once for a fixed computation on fixed tensors (warm-up and capture run on
//! a side stream from libtorch's pool, as PyTorch's `torch.cuda.graph` does) and then replayed:
//! one launch instead of one per op. Inputs are copied into the captured tensors before each
//! replay; outputs are read from the tensors the capture produced.
//!
//! `SCOREFLOW_CUDA_GRAPHS=off` turns graphs off (anything else, or unset, leaves them on where
//! the binary has the shim). Builds without the CUDA headers have no shim: graphs are off and
//! peak memory is unknown.

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

#[cfg(scoreflow_cuda_shim)]
mod ffi {
    use std::os::raw::{c_int, c_longlong, c_void};
    extern "C" {
        pub fn scoreflow_graph_new(device: c_int) -> *mut c_void;
        pub fn scoreflow_graph_enter(g: *mut c_void) -> c_int;
        pub fn scoreflow_graph_exit(g: *mut c_void) -> c_int;
        pub fn scoreflow_graph_capture_begin(g: *mut c_void) -> c_int;
        pub fn scoreflow_graph_capture_end(g: *mut c_void) -> c_int;
        pub fn scoreflow_graph_replay(g: *mut c_void) -> c_int;
        pub fn scoreflow_graph_free(g: *mut c_void);
        pub fn scoreflow_cuda_peak_bytes(device: c_int) -> c_longlong;
        pub fn scoreflow_cuda_reset_peak(device: c_int) -> c_int;
    }
}

#[cfg(scoreflow_cuda_shim)]
use crate::shim::check;

/// Whether this binary can capture CUDA graphs and graphs are not turned off.
pub fn graphs_enabled() -> bool {
    cfg!(scoreflow_cuda_shim)
        && std::env::var("SCOREFLOW_CUDA_GRAPHS")
            .map(|v| !v.eq_ignore_ascii_case("off") && v != "0")
            .unwrap_or(true)
}

/// A captured CUDA graph.
pub struct CudaGraph {
    #[cfg(scoreflow_cuda_shim)]
    ptr: *mut std::os::raw::c_void,
}

// SAFETY: the graph is an owned C++ object; replays are serialized by its owner (a Mutex).
unsafe impl Send for CudaGraph {}

impl CudaGraph {
    /// Run `f` twice on a side stream to warm up (allocator, cuDNN/cuBLAS set-up), then once
    /// more under capture; returns the graph and what the captured run returned (its tensors are
    /// the graph's outputs). `f` must not synchronize with the host.
    #[allow(unused_variables, unused_mut)]
    pub fn capture<T>(device: Device, mut f: impl FnMut() -> T) -> Result<(CudaGraph, T)> {
        let Device::Cuda(index) = device else {
            bail!("CUDA graphs need a CUDA device, got {device:?}");
        };
        #[cfg(scoreflow_cuda_shim)]
        {
            // SAFETY: calls into the shim with the pointer it returned; errors are statuses.
            unsafe {
                let ptr = ffi::scoreflow_graph_new(index as i32);
                if ptr.is_null() {
                    check(1, "cannot create a CUDA graph")?;
                }
                let g = CudaGraph { ptr };
                check(ffi::scoreflow_graph_enter(ptr), "CUDA graph side stream")?;
                // tch panics on libtorch errors (an op that synchronizes during capture, say):
                // catch them, quietly, so that the caller can fall back to running eagerly.
                let hook = std::panic::take_hook();
                std::panic::set_hook(Box::new(|_| {}));
                let mut run = || {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(&mut f)).map_err(|p| {
                        let msg = p
                            .downcast_ref::<String>()
                            .map(|s| s.as_str())
                            .or_else(|| p.downcast_ref::<&str>().copied())
                            .unwrap_or("panic");
                        anyhow::anyhow!("{}", msg.lines().next().unwrap_or(""))
                    })
                };
                let captured: Result<T> = (|| {
                    run()?;
                    run()?;
                    check(
                        ffi::scoreflow_graph_capture_begin(ptr),
                        "CUDA graph capture",
                    )?;
                    let out = run();
                    let end = check(ffi::scoreflow_graph_capture_end(ptr), "CUDA graph capture");
                    let out = out?;
                    end?;
                    Ok(out)
                })();
                std::panic::set_hook(hook);
                let exited = check(ffi::scoreflow_graph_exit(ptr), "CUDA graph side stream");
                let out = captured?;
                exited?;
                Ok((g, out))
            }
        }
        #[cfg(not(scoreflow_cuda_shim))]
        bail!("this scoreflow was built without the CUDA shim (no CUDA headers at build time)")
    }

    /// Replay the captured work on the current stream.
    pub fn replay(&self) -> Result<()> {
        #[cfg(scoreflow_cuda_shim)]
        // SAFETY: `ptr` is a live graph owned by `self`.
        return check(
            unsafe { ffi::scoreflow_graph_replay(self.ptr) },
            "CUDA graph replay",
        );
        #[cfg(not(scoreflow_cuda_shim))]
        bail!("this scoreflow was built without the CUDA shim")
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        #[cfg(scoreflow_cuda_shim)]
        // SAFETY: `ptr` came from `scoreflow_graph_new` and is freed once.
        unsafe {
            ffi::scoreflow_graph_free(self.ptr)
        }
    }
}

/// CUDA graphs of a denoiser call `f(x, sigma)` for the batch shapes seen so far (at most 8,
/// the oldest dropped first): the captured call reads `x` and sigma from fixed tensors, so a new
/// sigma is a fill, not a new capture. Used by trained networks and the exact denoisers.
#[derive(Default)]
pub struct Graphs {
    cache: std::sync::Mutex<GraphCache>,
}

#[derive(Default)]
struct GraphCache {
    /// Capture failed once: stay eager.
    failed: bool,
    entries: Vec<GraphEntry>,
}

struct GraphEntry {
    size: Vec<i64>,
    kind: Kind,
    x: Tensor,
    sigma: Tensor,
    out: Tensor,
    graph: CudaGraph,
}

/// At most this many captured batch shapes per denoiser.
const MAX_GRAPHS: usize = 8;

impl Graphs {
    /// `f(x, sigma)` by replaying its CUDA graph for `x`'s shape and kind, capturing it on the
    /// first call; `sigma_tensor(sigma, x)` makes the captured sigma (any shape: a replay fills
    /// it with the new sigma). None where graphs do not apply (`x` not on CUDA or requiring
    /// grad, graphs off, a capture that failed: it says so once on stderr), and the caller runs
    /// eagerly. `f` runs
    /// under no_grad and must not synchronize with the host.
    pub fn call(
        &self,
        x: &Tensor,
        sigma: f64,
        sigma_tensor: impl Fn(f64, &Tensor) -> Tensor,
        f: impl Fn(&Tensor, &Tensor) -> Tensor,
    ) -> Result<Option<Tensor>> {
        let device = x.device();
        // A replay has no autograd history: calls that differentiate through the denoiser
        // (the likelihood's divergence) run eagerly.
        if !device.is_cuda() || !graphs_enabled() || x.requires_grad() {
            return Ok(None);
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.failed {
            return Ok(None);
        }
        let (size, kind) = (x.size(), x.kind());
        let pos = match cache
            .entries
            .iter()
            .position(|e| e.size == size && e.kind == kind)
        {
            Some(p) => p,
            None => {
                let sx = x.copy();
                let ss = sigma_tensor(sigma, x);
                match CudaGraph::capture(device, || tch::no_grad(|| f(&sx, &ss))) {
                    Ok((graph, out)) => {
                        if cache.entries.len() >= MAX_GRAPHS {
                            cache.entries.remove(0);
                        }
                        cache.entries.push(GraphEntry {
                            size,
                            kind,
                            x: sx,
                            sigma: ss,
                            out,
                            graph,
                        });
                        cache.entries.len() - 1
                    }
                    Err(e) => {
                        eprintln!("scoreflow: CUDA graph capture failed, running eagerly: {e}");
                        cache.failed = true;
                        return Ok(None);
                    }
                }
            }
        };
        let e = &mut cache.entries[pos];
        tch::no_grad(|| {
            e.x.copy_(x);
            let _ = e.sigma.fill_(sigma);
        });
        e.graph.replay()?;
        // The captured output is overwritten by the next replay: hand out a copy (a conversion
        // is one already).
        Ok(Some(if kind == e.out.kind() {
            e.out.copy()
        } else {
            e.out.to_kind(kind)
        }))
    }
}

/// Peak bytes the caching allocator has handed out on `device` since the last
/// [`reset_peak_memory`] (None on the CPU or without the shim).
pub fn peak_memory(device: Device) -> Option<u64> {
    #[cfg(scoreflow_cuda_shim)]
    if let Device::Cuda(i) = device {
        // SAFETY: a plain query; -1 on error.
        let b = unsafe { ffi::scoreflow_cuda_peak_bytes(i as i32) };
        return (b >= 0).then_some(b as u64);
    }
    let _ = device;
    None
}

/// Reset the peak-memory statistic of `device` (no-op on the CPU).
pub fn reset_peak_memory(device: Device) {
    #[cfg(scoreflow_cuda_shim)]
    if let Device::Cuda(i) = device {
        // SAFETY: a plain call; its status is irrelevant here.
        unsafe {
            ffi::scoreflow_cuda_reset_peak(i as i32);
        }
    }
    let _ = device;
}
