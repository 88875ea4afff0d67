//! EDICT, exact diffusion inversion via coupled transformations (Wallace, Gokul & Naik 2023,
//! CVPR, eqs. 14-16; salesforce/EDICT `edict_functions.py`, `coupled_stablediffusion`; the form
//! of zituitui/BELM `samplers/edict.py`). Two sequences `x` and `y` start from the same latent;
//! each step updates each with a DDIM step whose noise prediction is the other's, then mixes
//! them with weight `p` (`mix_weight`, 0.93 by default):
//!
//! in the scaled variable, with `h = sigma_{i+1} - sigma_i` and
//! `eps(z) = (z - D(z; sigma_i)) / sigma_i` (the DDIM step `z + h eps` is Euler's),
//!
//! `x' = x + h eps(y)`, `y' = y + h eps(r x')`, `x_{i+1} = p x' + (1 - p) y'`,
//! `y_{i+1} = p y' + (1 - p) x_{i+1}`,
//!
//! `r = s(sigma_{i+1}) / s(sigma_i)`: the intermediate `x'` is already at the next level, and
//! the references pass it to the model at the current one in DDIM's variable, the SDE's
//! `z = s(t) x` (VP's; `r = 1` under EDM and VE, where both variables are the scaled one).
//! Each line solves for its left-hand side's input, so the step inverts exactly, with the same
//! two evaluations: `y' = (y_{i+1} - (1 - p) x_{i+1}) / p`, `x' = (x_{i+1} - (1 - p) y') / p`,
//! `y = y' - h eps(r x')`, `x = x' - h eps(y)`. With `leapfrog` (the default, as
//! salesforce/EDICT's `leapfrog_steps=True`; BELM's copy has none) the odd steps (`i` = 1, 3,
//! ...) update `y` first, from `x`, and `x` from the new `y`; the mixing is the same. `p = 1` is not allowed (no mixing: the pair drifts
//! apart and the inversion is unstable); `p` in (0, 1). The sample is `x`; the companion `y`.
//! The mixing is the same in either variable (both sequences are at the same level). `n` steps
//! cost `2n` evaluations.

use crate::driver::{ExactInverse, Sampler, StepCtx};
use crate::error::{Result, SolverError};
use tch::Tensor;

#[derive(Clone, Debug)]
pub struct Edict {
    pub mix_weight: f64,
    pub leapfrog: bool,
}

impl Edict {
    pub fn new(mix_weight: f64, leapfrog: bool) -> Result<Self> {
        if !(mix_weight > 0.0 && mix_weight < 1.0) {
            return Err(SolverError::Invalid(format!(
                "edict's mix_weight must be in (0, 1) (0.93 by default), got {mix_weight}"
            )));
        }
        Ok(Edict {
            mix_weight,
            leapfrog,
        })
    }

    /// Whether step `index` updates `y` first (the odd steps under `leapfrog`).
    fn swapped(&self, index: usize) -> bool {
        self.leapfrog && index % 2 == 1
    }
}

/// `(sigma_i, h, r)` of the step: its level, its length and the ratio of the SDE's scales at
/// its ends.
fn levels(ctx: &StepCtx<'_>) -> (f64, f64, f64) {
    let (s, next) = (ctx.sigma(), ctx.sigma_next());
    (
        s,
        next - s,
        ctx.sde.s_of_sigma(next) / ctx.sde.s_of_sigma(s),
    )
}

impl Sampler for Edict {
    fn name(&self) -> &'static str {
        "edict"
    }
    fn step(&self, ctx: &mut StepCtx<'_>, x: Tensor) -> Result<Tensor> {
        let (s, h, r) = levels(ctx);
        let p = self.mix_weight;
        let y = match ctx.history.pop() {
            Some(y) => y,
            None => x.shallow_clone(),
        };
        // (a, b): the sequence updated first and the other.
        let (a, b) = if self.swapped(ctx.index) {
            (y, x)
        } else {
            (x, y)
        };
        let a_i = &a + ctx.derivative(&b, s)? * h;
        let b_i = b + ctx.derivative(&(&a_i * r), s)? * h;
        let (x_i, y_i) = if self.swapped(ctx.index) {
            (b_i, a_i)
        } else {
            (a_i, b_i)
        };
        let x_next = &x_i * p + &y_i * (1.0 - p);
        let y_next = y_i * p + &x_next * (1.0 - p);
        ctx.history.push(y_next);
        Ok(x_next)
    }
    fn exact_inverse(&self) -> Option<&dyn ExactInverse> {
        Some(self)
    }
}

impl ExactInverse for Edict {
    fn data_companion(&self, _ctx: &mut StepCtx<'_>, x: &Tensor) -> Result<Tensor> {
        Ok(x.shallow_clone())
    }
    fn unstep(
        &self,
        ctx: &mut StepCtx<'_>,
        x: Tensor,
        companion: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (s, h, r) = levels(ctx);
        let p = self.mix_weight;
        let y_i = (&companion - &x * (1.0 - p)) / p;
        let x_i = (x - &y_i * (1.0 - p)) / p;
        let (a_i, b_i) = if self.swapped(ctx.index) {
            (y_i, x_i)
        } else {
            (x_i, y_i)
        };
        let b = b_i - ctx.derivative(&(&a_i * r), s)? * h;
        let a = a_i - ctx.derivative(&b, s)? * h;
        Ok(if self.swapped(ctx.index) {
            (b, a)
        } else {
            (a, b)
        })
    }
    fn first_undone(&self) -> usize {
        0
    }
}
