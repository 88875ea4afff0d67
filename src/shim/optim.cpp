// Multi-tensor optimizer kernels that tch does not expose: libtorch's fused Adam
// (at::_fused_adam_, what torch.optim.Adam(fused=True) runs) and the foreach ops for gradient
// scaling and the EMA. One call updates every parameter, instead of several ops per parameter.
// Tensors come from tch, whose C_tensor is an at::Tensor. Every entry point returns a status
// (status.h); this file also defines the shims' shared error message.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_norm.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/_fused_adam.h>

#include <string>
#include <vector>

#include "status.h"

thread_local std::string scoreflow_shim_error;

namespace {
std::vector<at::Tensor> list(at::Tensor** p, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(*p[i]);
  return out;
}
}  // namespace

extern "C" {
const char* scoreflow_shim_last_error() { return scoreflow_shim_error.c_str(); }

// params -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps), after m, v updated with grads (scaled
// first by grad_mul when given: the clipping factor, a 0-dim tensor); `step` (a 0-dim float
// tensor holding the 1-based step) gives the bias corrections.
int scoreflow_adam_step(at::Tensor** params, at::Tensor** grads, at::Tensor** m, at::Tensor** v,
                        size_t n, at::Tensor* step, at::Tensor* grad_mul, double lr, double beta1,
                        double beta2, double eps) {
  return guarded([&] {
    auto p = list(params, n), g = list(grads, n), mm = list(m, n), vv = list(v, n);
    std::vector<at::Tensor> steps(n, *step);
    if (grad_mul != nullptr) at::_foreach_mul_(g, *grad_mul);
    at::_fused_adam_(p, g, mm, vv, {}, steps, lr, beta1, beta2, 0.0, eps, false, false);
  });
}

// The 2-norm of all the tensors together, as a new 0-dim tensor (nullptr on error).
at::Tensor* scoreflow_global_norm(at::Tensor** tensors, size_t n) {
  at::Tensor* out = nullptr;
  guarded([&] {
    auto norms = at::_foreach_norm(list(tensors, n), 2);
    out = new at::Tensor(at::linalg_vector_norm(at::stack(norms), 2));
  });
  return out;
}

// ema <- ema + weight (params - ema), i.e. beta ema + (1 - beta) params with weight = 1 - beta.
int scoreflow_lerp(at::Tensor** ema, at::Tensor** params, size_t n, double weight) {
  return guarded([&] {
    auto e = list(ema, n);
    at::_foreach_lerp_(e, list(params, n), at::Scalar(weight));
  });
}
}
