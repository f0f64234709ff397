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

#include <algorithm>

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

// G = F F^T, accumulated over chunks of positions so that a bf16/fp16 chunk's float32 copy stays in
// cache instead of the whole map being copied out to memory and read back. G is symmetric: with C
// split into k row blocks, block i needs only the columns from its own diagonal block on, one GEMM
// (rows_i x C_i..C) each, written in place; the blocks below the diagonal are then mirrored. That is
// (k+1)/2k of the full product's work in k GEMMs — wide enough to keep the BLAS at full speed, which
// square blocks of the same size (k(k+1)/2 narrower GEMMs) were not (benchmarks/NOTES.md §6).
constexpr int64_t kChunkBytes = 1 << 21;  // float32 bytes of one converted chunk (fits L2)

int64_t row_block(int64_t c) {
  const int64_t blocks = c < 64 ? 1 : (c < 256 ? 2 : 4);
  return (c + blocks - 1) / blocks;
}

void add_gram_blocks(at::Tensor& g, const at::Tensor& f, bool accumulate) {
  // g: C x C (float32/float64), f: C x K; g (+)= f f^T on and above the diagonal blocks.
  const int64_t c = f.size(0), step = row_block(c);
  for (int64_t i = 0; i < c; i += step) {
    const int64_t r = std::min(step, c - i);
    auto out = g.narrow(0, i, r).narrow(1, i, c - i);
    if (accumulate) {
      out.addmm_(f.narrow(0, i, r), f.narrow(0, i, c - i).t());
    } else {
      at::mm_out(out, f.narrow(0, i, r), f.narrow(0, i, c - i).t());
    }
  }
}

void mirror_lower_blocks(at::Tensor& g) {
  const int64_t c = g.size(0), step = row_block(c);
  for (int64_t i = 0; i + step < c; i += step) {
    const int64_t r = std::min(step, c - i);
    g.narrow(0, i + r, c - i - r).narrow(1, i, r).copy_(g.narrow(0, i, r).narrow(1, i + r, c - i - r).t());
  }
}

at::Tensor gram_cpu(const at::Tensor& feats, double scale) {
  check_feats(feats, "nst_fast::gram");
  const auto acc = accumulation_type(feats.scalar_type());
  const auto f = feats.reshape({feats.size(0), feats.size(1), -1});  // a view for both layouts
  const int64_t c = f.size(1), hw = f.size(2);
  auto g = at::empty({f.size(0), c, c}, f.options().dtype(acc));
  const bool convert = f.scalar_type() != acc;
  const int64_t chunk = convert ? std::max<int64_t>(256, kChunkBytes / (4 * c)) : hw;
  for (int64_t b = 0; b < f.size(0); ++b) {
    auto gb = g[b];
    if (hw == 0) gb.zero_();
    for (int64_t k = 0; k < hw; k += chunk) {
      const auto part = f[b].narrow(1, k, std::min(chunk, hw - k));
      add_gram_blocks(gb, convert ? part.to(acc) : part, /*accumulate=*/k > 0);
    }
    mirror_lower_blocks(gb);
  }
  return g.mul_(scale);
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
  // formulas. Symmetrizing costs a C x C add and keeps the gradient right for any target; the scalar
  // factor is folded into that C x C matrix rather than applied to the C x HW result.
  const auto sym = (diff + diff.transpose(1, 2)).mul_(grad.to(diff.scalar_type()) * (2.0 * scale));
  const bool cl = is_channels_last(feats);
  // Positions x channels (channels_last) or channels x positions: a view in both layouts.
  const auto f = cl ? feats.permute({0, 2, 3, 1}).reshape({b, h * w, c}) : feats.reshape({b, c, h * w});
  if (feats.scalar_type() == diff.scalar_type()) {
    const auto out = cl ? at::bmm(f, sym) : at::bmm(sym, f);  // S symmetric: (F^T S)^T = S F
    return cl ? out.view({b, h, w, c}).permute({0, 3, 1, 2}) : out.view({b, c, h, w});
  }
  // bf16/fp16: converted a cache-sized chunk of positions at a time and written straight into the
  // output in F's dtype, so that no float32 copy of F or of the result is ever made in memory (the
  // whole-map conversions took 10 bytes per element at the peak and twice float32's time;
  // benchmarks/NOTES.md §8).
  const auto out = at::empty({b, c, h, w}, feats.options().memory_format(
                                                 cl ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
  const auto o = cl ? out.permute({0, 2, 3, 1}).view({b, h * w, c}) : out.view({b, c, h * w});
  const int64_t hw = h * w, positions = cl ? 0 : 1, chunk = std::max<int64_t>(256, kChunkBytes / (4 * c));
  for (int64_t i = 0; i < b; ++i) {
    const auto s_i = sym[i];
    for (int64_t k = 0; k < hw; k += chunk) {
      const int64_t n = std::min(chunk, hw - k);
      const auto part = f[i].narrow(positions, k, n).to(diff.scalar_type());
      o[i].narrow(positions, k, n).copy_(cl ? at::mm(part, s_i) : at::mm(s_i, part));
    }
  }
  return out;
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
