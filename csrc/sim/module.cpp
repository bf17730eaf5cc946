// The CUDA simulator's test-only Python module rnnfused_cuda_sim (SPEC §8): the CUDA layer driver
// and kernels (layer_cuda_<cell>.cu, compiled by the host compiler with RNNFUSED_CUDA_SIM) as the
// ops torch.ops.rnnfused_sim.*, with the schemas of torch.ops.rnnfused and CPU tensors, and the
// simulator's controls. Built by `make test-cuda-sim` and CI (CMake, RNNFUSED_CUDA_SIM=ON), never
// by a user's install.
#include <torch/extension.h>
#include <torch/library.h>

#include "cuda_sim.h"
#include "../layer_cuda.h"
#include "../layer_ops.h"
#include "../layer_schemas.h"

namespace {

// The CUDA layer driver, run by the simulator on the CPU.
struct SimulatedCudaDevice {
  template <rnnfused::CellKind kCell>
  static rnnfused::LayerOutputs forward(const rnnfused::ForwardArgs& args) {
    return rnnfused::cuda::forward<kCell>(args);
  }
  template <rnnfused::CellKind kCell>
  static rnnfused::LayerGrads backward(const rnnfused::BackwardArgs& args) {
    return rnnfused::cuda::backward<kCell>(args);
  }
};

std::vector<std::tuple<std::string, int64_t, int>> launch_log(bool clear) {
  std::vector<std::tuple<std::string, int64_t, int>> out;
  for (const auto& l : rnnfused::sim::launch_log(clear)) out.emplace_back(l.kernel, l.grid, l.block);
  return out;
}

}  // namespace

void register_selftests(pybind11::module& m);  // selftest.cpp

TORCH_LIBRARY(rnnfused_sim, m) { rnnfused::define_layer_ops(m); }

TORCH_LIBRARY_IMPL(rnnfused_sim, CPU, m) { rnnfused::register_layer_ops<SimulatedCudaDevice>(m); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfused's CUDA kernels run by the CPU simulator of SPEC §8 (torch.ops.rnnfused_sim)";
  m.def("set_thread_order", &rnnfused::sim::set_thread_order, py::arg("order"),
        py::arg("seed") = 0,
        "The order in which the threads of a block and the blocks of a grid run: 'forward', "
        "'reverse' or 'shuffle' (seeded)");
  m.def("thread_order", &rnnfused::sim::thread_order, "The order set, e.g. 'shuffle:1234'");
  m.def("set_launch_logging", &rnnfused::sim::set_launch_logging, py::arg("on"),
        "Whether launches are logged (see launch_log)");
  m.def("launch_log", &launch_log, py::arg("clear") = true,
        "(kernel, grid, block) of every launch logged since the last clear");
  register_selftests(m);
}
