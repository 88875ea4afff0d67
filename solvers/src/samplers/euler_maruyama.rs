//! Euler-Maruyama on the reverse-time SDE of the chosen forward process (Song et al. 2021,
//! eq. 6; score_sde `EulerMaruyamaPredictor`), stepping in the SDE's own time `t` and in the
//! unscaled variable `x = s(t) x^`:
//!
//! `x' = x + [f(t) x - g(t)^2 score(x, t)] (t' - t) + g(t) (W(t) - W(t'))`,
//!
//! with `f = s'/s`, `g = s sqrt(2 sigma' sigma)` and `score(x, t) = (D(x / s; sigma) - x / s) /
//! (s sigma^2)`. The Brownian increments come from one path per sample indexed by `t`, so runs
//! at different step counts share it. The step to sigma = 0 returns the denoised mean
//! `D(x^; sigma_{n-1})` (score_sde's final denoising step). One evaluation per step.

use crate::driver::{Sampler, StepCtx};
use crate::error::Result;
use crate::noise::STREAM_TIME;
use tch::Tensor;

pub struct EulerMaruyama;

impl Sampler for EulerMaruyama {
    fn name(&self) -> &'static str {
        "euler-maruyama"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x_hat: Tensor) -> Result<Tensor> {
        let (sigma, sigma_next) = (ctx.sigma(), ctx.sigma_next());
        let denoised = ctx.denoise(&x_hat, sigma)?;
        if sigma_next == 0.0 {
            return Ok(denoised);
        }
        let sde = ctx.sde;
        let (t, t_next) = (sde.sigma_inv(sigma), sde.sigma_inv(sigma_next));
        let (s, s_next) = (sde.s(t), sde.s(t_next));
        let g = sde.diffusion(t);
        let x = &x_hat * s;
        let score = (denoised - &x_hat) / (s * sigma * sigma);
        let drift = sde.reverse_drift(&x, t, &score);
        let dw = ctx.noise.increment(STREAM_TIME, t_next, t)?;
        let x_next = x + drift * (t_next - t) + dw * g;
        Ok(x_next / s_next)
    }
}
