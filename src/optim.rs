//! One-call optimizer updates through the C++ shim (`src/shim/optim.cpp`): libtorch's fused Adam
//! (`at::_fused_adam_`, as `torch.optim.Adam(fused=True)`) and the foreach lerp for the EMA. On a
//! GPU this is a handful of kernel launches per step instead of several per parameter tensor.

use crate::shim::check;
use anyhow::{bail, Result};
use std::os::raw::c_int;
use tch::Tensor;

type Raw = *mut torch_sys::C_tensor;

extern "C" {
    #[allow(clippy::too_many_arguments)]
    fn scoreflow_adam_step(
        params: *const Raw,
        grads: *const Raw,
        m: *const Raw,
        v: *const Raw,
        n: usize,
        step: Raw,
        grad_mul: Raw,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> c_int;
    fn scoreflow_lerp(ema: *const Raw, params: *const Raw, n: usize, weight: f64) -> c_int;
    fn scoreflow_global_norm(tensors: *const Raw, n: usize) -> Raw;
}

fn raw(ts: &[Tensor]) -> Vec<Raw> {
    ts.iter().map(|t| t.as_ptr() as Raw).collect()
}

/// One Adam step (no weight decay) on every parameter: `m`, `v` and the parameters are updated
/// in place; `step` is a 0-dim float tensor holding the 1-based step count; `grad_mul`, a 0-dim
/// tensor, scales the gradients first (in place). Call under `tch::no_grad`.
#[allow(clippy::too_many_arguments)]
pub fn adam_step(
    params: &[Tensor],
    grads: &[Tensor],
    m: &[Tensor],
    v: &[Tensor],
    step: &Tensor,
    grad_mul: Option<&Tensor>,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
) -> Result<()> {
    let n = params.len();
    if grads.len() != n || m.len() != n || v.len() != n {
        bail!(
            "adam_step: {n} parameters but {} grads, {} m, {} v",
            grads.len(),
            m.len(),
            v.len()
        );
    }
    let (p, g, mm, vv) = (raw(params), raw(grads), raw(m), raw(v));
    let gm = grad_mul.map_or(std::ptr::null_mut(), |t| t.as_ptr() as Raw);
    // SAFETY: every pointer is a live tch tensor (an at::Tensor) borrowed for the call.
    let status = unsafe {
        scoreflow_adam_step(
            p.as_ptr(),
            g.as_ptr(),
            mm.as_ptr(),
            vv.as_ptr(),
            n,
            step.as_ptr() as Raw,
            gm,
            lr,
            betas.0,
            betas.1,
            eps,
        )
    };
    check(status, "fused Adam step")
}

/// `ema <- ema + weight (params - ema)` for every pair, in place. Call under `tch::no_grad`.
pub fn lerp(ema: &[Tensor], params: &[Tensor], weight: f64) -> Result<()> {
    if ema.len() != params.len() {
        bail!("lerp: {} targets but {} sources", ema.len(), params.len());
    }
    let (e, p) = (raw(ema), raw(params));
    // SAFETY: as above.
    check(
        unsafe { scoreflow_lerp(e.as_ptr(), p.as_ptr(), e.len(), weight) },
        "EMA update",
    )
}

/// The 2-norm of all `tensors` together (a 0-dim tensor on their device), in two multi-tensor
/// calls (`_foreach_norm`, then the norm of the norms).
pub fn global_norm(tensors: &[Tensor]) -> Result<Tensor> {
    let t = raw(tensors);
    // SAFETY: as above; the shim returns a new heap at::Tensor that tch then owns.
    let out = unsafe { scoreflow_global_norm(t.as_ptr(), t.len()) };
    if out.is_null() {
        check(1, "gradient norm")?;
    }
    // SAFETY: a valid, uniquely owned at::Tensor pointer.
    Ok(unsafe { Tensor::from_ptr(out) })
}
