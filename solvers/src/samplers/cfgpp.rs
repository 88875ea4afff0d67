//! CFG++ (Chung, Kim, Park, Nam & Ye 2025, "CFG++: Manifold-constrained Classifier Free
//! Guidance for Diffusion Models", ICLR): with classifier-free guidance, the step moves to the
//! guided estimate `D = D_u + w (D_c - D_u)` but renoises with the unconditional branch's noise
//! `(x - D_u) / sigma` instead of the guided one. The paper's Algorithm 1 is DDIM in this form
//! (`x' = D + sigma' (x - D_u) / sigma` in the EDM variable); the samplers here are ComfyUI's
//! `sample_euler_cfg_pp`, `sample_euler_ancestral_cfg_pp` and `sample_dpmpp_2m_cfg_pp`
//! (`comfy/k_diffusion/sampling.py`), which take `D_u` from the same guided evaluation. On a
//! denoiser without guidance `D_u = D` and each is its plain counterpart (euler,
//! euler-ancestral, dpmpp-2m). One evaluation per step.

use super::dpmpp_2m::lambda;
use super::euler_ancestral::ancestral_step;
use super::{add_step_noise, check_nonneg};
use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use tch::Tensor;

/// Euler (eta = 0) and Euler ancestral steps with CFG++'s renoising:
/// `x' = D + sigma_down (x - D_u) / sigma + s_noise sigma_up z`, `(sigma_down, sigma_up)`
/// k-diffusion's ancestral split of the step; `D` on the step to 0.
#[derive(Clone, Debug)]
pub struct EulerCfgPp {
    pub eta: f64,
    pub s_noise: f64,
    /// The registry name: `euler-cfgpp` (eta 0) or `euler-ancestral-cfgpp`.
    pub name: &'static str,
}

impl EulerCfgPp {
    pub fn new(eta: f64, s_noise: f64, name: &'static str) -> Result<Self> {
        check_nonneg("eta", eta)?;
        check_nonneg("s_noise", s_noise)?;
        Ok(EulerCfgPp { eta, s_noise, name })
    }
}

impl Sampler for EulerCfgPp {
    fn name(&self) -> &'static str {
        self.name
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (d, u) = ctx.denoise_guided(&x, s)?;
        if s_next == 0.0 {
            return Ok(d);
        }
        let (down, up) = ancestral_step(s, s_next, self.eta);
        let out = d + (x - u) * (down / s);
        add_step_noise(ctx, out, s_next, s, up * self.s_noise)
    }
}

/// DPM-Solver++(2M) with CFG++'s renoising (ComfyUI's `sample_dpmpp_2m_cfg_pp`): with
/// `lambda = -log sigma`, `h = lambda(sigma') - lambda(sigma)`, `r = h_prev / h`,
///
/// `x' = D + e^{-h} (x - D_u) - expm1(-h) (D - D_u,prev) / (2r)`,
///
/// the correction term absent on the first step; `D` on the step to 0. At `D_u = D` this is
/// dpmpp-2m rearranged.
#[derive(Clone, Debug)]
pub struct DpmPp2MCfgPp;

impl Sampler for DpmPp2MCfgPp {
    fn name(&self) -> &'static str {
        "dpmpp-2m-cfgpp"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, s_next) = (ctx.sigma(), ctx.sigma_next());
        let (d, u) = ctx.denoise_guided(&x, s)?;
        let out = if s_next == 0.0 {
            d
        } else {
            let h = lambda(s_next) - lambda(s);
            let base = &d + (x - &u) * (-h).exp();
            match ctx.history.last() {
                Some(old) if ctx.index > 0 => {
                    let h_last = lambda(s) - lambda(ctx.sigmas[ctx.index - 1]);
                    let r = h_last / h;
                    base - (d - old) * ((-h).exp_m1() / (2.0 * r))
                }
                _ => base,
            }
        };
        ctx.history.clear();
        ctx.history.push(u);
        Ok(out)
    }
}
