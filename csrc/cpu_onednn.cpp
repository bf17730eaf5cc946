// oneDNN's products through torch's registered mkldnn ops (cpu_onednn.h).
#include "cpu_onednn.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <optional>
#include <string_view>

namespace rnnfused {
namespace onednn {

namespace {

using LinearFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                            std::string_view, c10::List<std::optional<at::Scalar>>,
                            std::optional<std::string_view>);
using ReorderFn = at::Tensor(const at::Tensor&, std::optional<int64_t>);

struct Ops {
  std::optional<c10::TypedOperatorHandle<LinearFn>> linear;
  std::optional<c10::TypedOperatorHandle<ReorderFn>> reorder;
};

// Looked up once: the ops are registered when libtorch_cpu loads, before any layer call.
const Ops& ops() {
  static const Ops found = [] {
    Ops o;
    auto& dispatcher = c10::Dispatcher::singleton();
    const auto linear = dispatcher.findSchema({"mkldnn::_linear_pointwise", ""});
    const auto reorder = dispatcher.findSchema({"mkldnn::_reorder_linear_weight", ""});
    if (linear && reorder && linear->hasKernelForDispatchKey(c10::DispatchKey::CPU) &&
        reorder->hasKernelForDispatchKey(c10::DispatchKey::CPU)) {
      try {  // a torch whose schemas differ from these (checked with 2.13) has no oneDNN here
        o.linear = linear->typed<LinearFn>();
        o.reorder = reorder->typed<ReorderFn>();
      } catch (const c10::Error&) {
        o = Ops{};
      }
    }
    return o;
  }();
  return found;
}

}  // namespace

bool available() {
  return at::hasMKLDNN() && at::globalContext().userEnabledMkldnn() && ops().linear.has_value();
}

// Called inside the layer ops, whose dtypes are decided: autocast must not recast the operands.
at::Tensor pack_weight(const at::Tensor& weight, int64_t rows) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return ops().reorder->call(weight, rows);
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight) {
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  return ops().linear->call(x, weight, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(),
                            std::nullopt);
}

}  // namespace onednn
}  // namespace rnnfused
