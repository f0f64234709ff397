// The nst_fast:: operators: schemas (registered once, here) and their CPU implementations.
//
//   gram(feats, scale)                          -> scale * F F^T            (B x C x C)
//   style_loss(feats, target, scale)            -> (sum (scale F F^T - A)^2, scale F F^T - A)
//   style_loss_backward(grad, feats, diff, scale) -> 2 scale grad (D + D^T) F, D = scale F F^T - A
//                                                  (= 4 scale grad D F for a symmetric target;
//                                                   in F's dtype and layout)
//
// F is B x C x H x W in float32, bfloat16, float16 or float64, contiguous or channels_last; the Gram
// matrix and the loss are accumulated in float32 (float64 for float64 input, which gradcheck uses).
// The second output of style_loss, G - A, is kept for the backward so that it need not recompute G.
// Autograd and fake kernels are registered from Python (nst_fast/ops.py).

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

namespace nst_fast {
namespace {

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_feats(const at::Tensor& feats, const char* op) {
  TORCH_CHECK(feats.dim() == 4, op, ": feats must be B x C x H x W, got ", feats.dim(), " dims");
  const auto t = feats.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble, op,
              ": feats must be float32, bfloat16, float16 or float64, got ", t);
}

bool is_channels_last(const at::Tensor& feats) {
  return !feats.is_contiguous() && feats.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// B x C x (H*W) in the accumulation dtype. For contiguous and channels_last inputs the reshape is a
// view (H and W merge in both layouts); only a dtype change copies.
at::Tensor flat(const at::Tensor& feats) {
  return feats.reshape({feats.size(0), feats.size(1), -1}).to(accumulation_type(feats.scalar_type()));
}

at::Tensor gram_cpu(const at::Tensor& feats, double scale) {
  check_feats(feats, "nst_fast::gram");
  const auto f = flat(feats);
  return at::bmm(f, f.transpose(1, 2)).mul_(scale);
}

std::tuple<at::Tensor, at::Tensor> style_loss_cpu(const at::Tensor& feats, const at::Tensor& target,
                                                  double scale) {
  check_feats(feats, "nst_fast::style_loss");
  const auto c = feats.size(1);
  TORCH_CHECK((target.dim() == 2 || target.dim() == 3) && target.size(-1) == c && target.size(-2) == c &&
                  (target.dim() == 2 || target.size(0) == 1 || target.size(0) == feats.size(0)),
              "nst_fast::style_loss: target must be C x C, 1 x C x C or B x C x C with B = ", feats.size(0),
              ", C = ", c, "; got ", target.sizes());
  TORCH_CHECK(target.device() == feats.device(), "nst_fast::style_loss: target is on ", target.device(),
              ", feats on ", feats.device());
  auto diff = gram_cpu(feats, scale);
  diff.sub_(target.to(diff.scalar_type()));
  auto loss = diff.square().sum();
  return {loss, diff};
}

at::Tensor style_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& feats, const at::Tensor& diff,
                                   double scale) {
  check_feats(feats, "nst_fast::style_loss_backward");
  const auto b = feats.size(0), c = feats.size(1), h = feats.size(2), w = feats.size(3);
  TORCH_CHECK(diff.dim() == 3 && diff.size(0) == b && diff.size(1) == c && diff.size(2) == c,
              "nst_fast::style_loss_backward: diff must be B x C x C = ", b, " x ", c, " x ", c);
  // d/dF sum (sG - A)^2 = 2s (D + D^T) F; with a symmetric target D + D^T = 2D, the 4s D F of the
  // formulas. Symmetrizing costs a C x C add and keeps the gradient right for any target.
  const auto sym = diff + diff.transpose(1, 2);
  const auto factor = grad.to(diff.scalar_type()) * (2.0 * scale);
  if (is_channels_last(feats)) {
    // (B x HW x C) . S, S symmetric: the result is already in channels_last order.
    const auto f_t = feats.permute({0, 2, 3, 1}).reshape({b, h * w, c}).to(diff.scalar_type());
    auto out = at::bmm(f_t, sym).mul_(factor);
    return out.view({b, h, w, c}).permute({0, 3, 1, 2}).to(feats.scalar_type());
  }
  auto out = at::bmm(sym, flat(feats)).mul_(factor);
  return out.view({b, c, h, w}).to(feats.scalar_type());
}

// Autocast: the operators take bf16/fp16 features as they come and accumulate in float32 themselves,
// so under autocast they run unchanged, with autocast switched off inside (else the at::bmm calls
// within would be lowered to bf16/fp16).
template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor gram_autocast(const at::Tensor& feats, double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op = find_op<decltype(gram_cpu)>("nst_fast::gram");
  return op.call(feats, scale);
}

std::tuple<at::Tensor, at::Tensor> style_loss_autocast(const at::Tensor& feats, const at::Tensor& target,
                                                       double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op = find_op<decltype(style_loss_cpu)>("nst_fast::style_loss");
  return op.call(feats, target, scale);
}

at::Tensor style_loss_backward_autocast(const at::Tensor& grad, const at::Tensor& feats, const at::Tensor& diff,
                                        double scale) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  static const auto op = find_op<decltype(style_loss_backward_cpu)>("nst_fast::style_loss_backward");
  return op.call(grad, feats, diff, scale);
}

}  // namespace

TORCH_LIBRARY(nst_fast, m) {
  m.def("gram(Tensor feats, float scale) -> Tensor");
  m.def("style_loss(Tensor feats, Tensor target, float scale) -> (Tensor, Tensor)");
  m.def("style_loss_backward(Tensor grad, Tensor feats, Tensor diff, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nst_fast, CPU, m) {
  m.impl("gram", &gram_cpu);
  m.impl("style_loss", &style_loss_cpu);
  m.impl("style_loss_backward", &style_loss_backward_cpu);
}

TORCH_LIBRARY_IMPL(nst_fast, AutocastCPU, m) {
  m.impl("gram", &gram_autocast);
  m.impl("style_loss", &style_loss_autocast);
  m.impl("style_loss_backward", &style_loss_backward_autocast);
}

TORCH_LIBRARY_IMPL(nst_fast, AutocastCUDA, m) {
  m.impl("gram", &gram_autocast);
  m.impl("style_loss", &style_loss_autocast);
  m.impl("style_loss_backward", &style_loss_backward_autocast);
}

}  // namespace nst_fast
