// Autocast with a chosen reduced-precision type (bf16) on CPU or CUDA: tch exposes only the
// on/off switch of CUDA autocast with libtorch's default type (float16).
#include <ATen/autocast_mode.h>

extern "C" {
// device: 0 = CPU, 1 = CUDA. Returns the previous enabled state.
bool scoreflow_autocast_bf16(int device, bool enabled) {
  const at::DeviceType dev = device == 1 ? at::kCUDA : at::kCPU;
  const bool prev = at::autocast::is_autocast_enabled(dev);
  at::autocast::set_autocast_dtype(dev, at::kBFloat16);
  at::autocast::set_autocast_enabled(dev, enabled);
  return prev;
}
void scoreflow_autocast_enter() { at::autocast::increment_nesting(); }
void scoreflow_autocast_exit() {
  if (at::autocast::decrement_nesting() == 0) {
    at::autocast::clear_cache();
  }
}
}
