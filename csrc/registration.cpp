// The op library torch.ops.rnnfused (TORCH_LIBRARY, with the schemas of layer_schemas.h) and
// the Python module rnnfused._C (SPEC §5).
//
// The CPU and CUDA files register their kernels for these schemas under the same names;
// rnnfused/_ops.py adds the fake (meta) implementations and the autograd formula, so
// torch.compile traces models that use the ops without a graph break.
#include <torch/extension.h>
#include <torch/library.h>

#include "cpu_gemm.h"
#include "layer.h"
#include "layer_schemas.h"

TORCH_LIBRARY(rnnfused, m) { rnnfused::define_layer_ops(m); }

namespace {

std::vector<at::Tensor> layer_masks_py(int64_t gates, int64_t seed, int64_t T, int64_t B,
                                       int64_t I, int64_t H, int64_t R, int64_t layer,
                                       bool reverse, std::vector<double> rates,
                                       at::ScalarType dtype) {
  return rnnfused::layer_masks(gates, seed, T, B, I, H, R, layer, reverse, rates, dtype);
}

std::vector<py::dict> cpu_gemm_choices() {
  std::vector<py::dict> out;
  for (const auto& c : rnnfused::cpu_gemm::choices()) {
    py::dict seconds;
    for (const auto& [backend, s] : c.seconds) seconds[py::str(backend)] = s;
    py::dict d;
    d["product"] = c.product;
    d["m"] = c.m;
    d["n"] = c.n;
    d["k"] = c.k;
    d["dtype"] = "float32";
    d["threads"] = c.threads;
    d["backend"] = c.backend;
    d["seconds"] = seconds;
    out.push_back(std::move(d));
  }
  return out;
}

// Every cell's spec (layer.h), keyed by its op name: what the Python side (the fake
// implementations, the autograd formulas) would otherwise repeat by hand.
py::dict cell_specs() {
  py::dict out;
  for (const rnnfused::CellKind kind : rnnfused::kAllCells) {
    const rnnfused::CellSpec spec = rnnfused::cell_spec(kind);
    py::dict d;
    d["name"] = spec.name;
    d["gates"] = spec.gates;
    d["has_cell"] = spec.has_cell;
    d["can_project"] = spec.can_project;
    d["layer_norm"] = spec.layer_norm;
    out[py::str(spec.op)] = d;
  }
  return out;
}

std::vector<std::string> rate_names() {
  return {rnnfused::kRateNames.begin(), rnnfused::kRateNames.end()};
}

bool has_cuda_kernels() {
#ifdef RNNFUSED_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "rnnfused's compiled kernels; the ops live under torch.ops.rnnfused";
  m.def("layer_masks", &layer_masks_py,
        "Masks of one layer call (gates = 4 for the LSTM, 3 for the GRU) as {0,1} tensors: "
        "input, recurrent, weight, candidate, zoneout_c, zoneout_h");
  m.def("has_cuda_kernels", &has_cuda_kernels, "Whether this build contains the CUDA kernels");
  m.def("cell_specs", &cell_specs, "Each cell's gates, cell state, projection and LN, by op name");
  m.def("rate_names", &rate_names, "The names of the ops' rates, in their order");
  m.attr("workspace_gates") = rnnfused::kWorkspaceGates;
  // The CPU GEMM backends (csrc/cpu_gemm.h); rnnfused/cpu_gemm.py is their Python face.
  m.def("cpu_gemm_available", &rnnfused::cpu_gemm::available,
        "The CPU GEMM backends this process can run: of onednn, mkl, small");
  m.def("cpu_gemm_force", &rnnfused::cpu_gemm::force, "Pin one backend, or 'auto' to measure");
  m.def("cpu_gemm_forced", &rnnfused::cpu_gemm::forced, "The pinned backend, or 'auto'");
  m.def("cpu_gemm_choices", &cpu_gemm_choices, "The backend each float32 product shape ran on");
  m.def("cpu_gemm_clear", &rnnfused::cpu_gemm::clear, "Forget the measured choices");
}
