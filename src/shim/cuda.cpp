// CUDA-only helpers through libtorch's C++ API, for what tch does not expose:
//   - CUDA graphs (at::cuda::CUDAGraph): warm up and capture on a side stream from libtorch's
//     pool, then replay on the caller's current stream;
//   - the caching allocator's peak-memory statistics (what torch.cuda.max_memory_allocated reads).
// Every entry point returns a status (status.h).
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/core/Event.h>

#include <optional>

#include "status.h"

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  c10::DeviceIndex device;
  c10::cuda::CUDAStream side;
  std::optional<c10::cuda::CUDAStream> prev;
  explicit Graph(c10::DeviceIndex d) : device(d), side(c10::cuda::getStreamFromPool(false, d)) {}
};

// `waiter` waits for all work queued so far on `on`.
void wait_for(c10::cuda::CUDAStream waiter, c10::cuda::CUDAStream on) {
  c10::Event ev(c10::DeviceType::CUDA);
  ev.record(on.unwrap());
  ev.block(waiter.unwrap());
}

}  // namespace

extern "C" {
void* scoreflow_graph_new(int device) {
  Graph* g = nullptr;
  guarded([&] { g = new Graph(static_cast<c10::DeviceIndex>(device)); });
  return g;
}

// Make the graph's side stream current (it first waits for the work already queued).
int scoreflow_graph_enter(void* p) {
  auto* g = static_cast<Graph*>(p);
  return guarded([&] {
    auto cur = c10::cuda::getCurrentCUDAStream(g->device);
    wait_for(g->side, cur);
    g->prev = cur;
    c10::cuda::setCurrentCUDAStream(g->side);
  });
}

// Restore the previous stream, which then waits for the side stream's work.
int scoreflow_graph_exit(void* p) {
  auto* g = static_cast<Graph*>(p);
  return guarded([&] {
    if (g->prev) {
      c10::cuda::setCurrentCUDAStream(*g->prev);
      wait_for(*g->prev, g->side);
      g->prev.reset();
    }
  });
}

int scoreflow_graph_capture_begin(void* p) {
  return guarded([&] { static_cast<Graph*>(p)->graph.capture_begin(); });
}

int scoreflow_graph_capture_end(void* p) {
  return guarded([&] { static_cast<Graph*>(p)->graph.capture_end(); });
}

int scoreflow_graph_replay(void* p) {
  return guarded([&] { static_cast<Graph*>(p)->graph.replay(); });
}

void scoreflow_graph_free(void* p) { guarded([&] { delete static_cast<Graph*>(p); }); }

// Peak bytes allocated by the caching allocator on `device` since the last reset (-1 on error).
long long scoreflow_cuda_peak_bytes(int device) {
  long long out = -1;
  guarded([&] {
    auto s = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    out = s.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  });
  return out;
}

int scoreflow_cuda_reset_peak(int device) {
  return guarded([&] {
    c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device));
  });
}
}
