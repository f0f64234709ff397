// CUDA implementations of the nst_fast:: operators (schemas and CPU versions: ../ops.cpp), on top of the
// framework-free kernels of gram_kernels.cu. This file only checks inputs, allocates outputs and
// workspaces with ATen, and calls the launchers on the current stream.
//
// float32 / bfloat16 / float16 features go to the kernels, contiguous (NCHW) or channels_last (NHWC) as
// they are; any other strides are made contiguous first. float64 (gradcheck) is computed with ATen ops
// on the GPU, like the CPU version. bfloat16 / float16 on a GPU without tensor-core bf16 support
// (compute capability < 8.0) are upcast to float32 for the forward.

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <climits>
#include <tuple>

#include "gram_kernels.cuh"

namespace nst_fast {
namespace {

// The features as the kernels see them.
struct Feats {
  at::Tensor t;  // contiguous or channels_last-contiguous
  nst_dtype dtype;
  nst_layout layout;
  int64_t b, c, hw;
};

void check_feats(const at::Tensor& feats, const char* op) {
  TORCH_CHECK(feats.is_cuda(), op, ": feats must be a CUDA tensor, got one on ", feats.device());
  TORCH_CHECK(feats.dim() == 4, op, ": feats must be B x C x H x W, got ", feats.dim(), " dims");
  const auto t = feats.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble, op,
              ": feats must be float32, bfloat16, float16 or float64, got ", t);
  TORCH_CHECK(feats.size(0) <= 65535, op, ": at most 65535 batch items are supported, got ", feats.size(0));
  TORCH_CHECK(feats.size(1) <= 32768, op, ": at most 32768 channels are supported, got ", feats.size(1));
}

Feats prepare(const at::Tensor& feats, bool need_tensor_cores) {
  at::Tensor t = feats;
  if (need_tensor_cores && t.scalar_type() != at::kFloat && !nst_tensor_cores_supported(t.get_device())) {
    t = t.to(at::kFloat);  // keeps channels_last (memory_format defaults to preserve)
  }
  nst_layout layout = NST_NCHW;
  if (t.is_contiguous()) {
    layout = NST_NCHW;
  } else if (t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    layout = NST_NHWC;
  } else {
    t = t.contiguous();
  }
  const nst_dtype dtype = t.scalar_type() == at::kFloat ? NST_FLOAT32
                          : t.scalar_type() == at::kHalf ? NST_FLOAT16
                                                          : NST_BFLOAT16;
  return {t, dtype, layout, t.size(0), t.size(1), t.size(2) * t.size(3)};
}

void check_target(const at::Tensor& feats, const at::Tensor& target, const char* op) {
  const int64_t b = feats.size(0), c = feats.size(1);
  TORCH_CHECK(target.device() == feats.device(), op, ": target must be on ", feats.device(), " like feats, got ",
              target.device());
  TORCH_CHECK(at::isFloatingType(target.scalar_type()), op, ": target must be floating point, got ",
              target.scalar_type());
  TORCH_CHECK((target.dim() == 2 || target.dim() == 3) && target.size(-1) == c && target.size(-2) == c &&
                  (target.dim() == 2 || target.size(0) == 1 || target.size(0) == b),
              op, ": target must be C x C, 1 x C x C or B x C x C with B = ", b, ", C = ", c, ", got ",
              target.sizes());
}

// float64: the same maths as the CPU version, with ATen ops (on the GPU).
at::Tensor flat(const at::Tensor& feats) { return feats.reshape({feats.size(0), feats.size(1), -1}); }

at::Tensor gram_f64(const at::Tensor& feats, double scale) {
  const auto f = flat(feats);
  return at::bmm(f, f.transpose(1, 2)).mul_(scale);
}

cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }

at::Tensor workspace(const Feats& f) {
  return at::empty({int64_t(nst_gram_workspace_bytes(int(f.b), int(f.c)))}, f.t.options().dtype(at::kByte));
}

at::Tensor gram_cuda(const at::Tensor& feats, double scale) {
  check_feats(feats, "nst_fast::gram");
  const c10::cuda::CUDAGuard guard(feats.device());
  if (feats.scalar_type() == at::kDouble) return gram_f64(feats, scale);

  const Feats f = prepare(feats, /*need_tensor_cores=*/true);
  auto out = at::empty({f.b, f.c, f.c}, feats.options().dtype(at::kFloat));
  if (out.numel() == 0) return out;
  auto ws = workspace(f);
  C10_CUDA_CHECK(nst_gram(f.t.data_ptr(), f.dtype, f.layout, int(f.b), int(f.c), f.hw, float(scale),
                          out.data_ptr<float>(), ws.data_ptr(), size_t(ws.numel()), current_stream()));
  return out;
}

std::tuple<at::Tensor, at::Tensor> style_loss_cuda(const at::Tensor& feats, const at::Tensor& target,
                                                   double scale) {
  check_feats(feats, "nst_fast::style_loss");
  check_target(feats, target, "nst_fast::style_loss");
  const c10::cuda::CUDAGuard guard(feats.device());
  if (feats.scalar_type() == at::kDouble) {
    auto diff = gram_f64(feats, scale);
    diff.sub_(target.to(at::kDouble));
    auto loss = diff.square().sum();
    return {loss, diff};
  }

  const Feats f = prepare(feats, /*need_tensor_cores=*/true);
  const auto a = target.to(at::kFloat).contiguous();
  const int batched = a.dim() == 3 && a.size(0) == f.b && f.b > 1;  // else one C x C matrix for all
  auto diff = at::empty({f.b, f.c, f.c}, feats.options().dtype(at::kFloat));
  auto loss = at::empty({}, feats.options().dtype(at::kFloat));
  if (diff.numel() == 0) return {loss.zero_(), diff};
  auto ws = workspace(f);
  C10_CUDA_CHECK(nst_style_loss(f.t.data_ptr(), f.dtype, f.layout, int(f.b), int(f.c), f.hw, a.data_ptr<float>(),
                                batched, float(scale), diff.data_ptr<float>(), loss.data_ptr<float>(), ws.data_ptr(),
                                size_t(ws.numel()), current_stream()));
  return {loss, diff};
}

at::Tensor style_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& feats, const at::Tensor& diff,
                                    double scale) {
  const char* op = "nst_fast::style_loss_backward";
  check_feats(feats, op);
  const int64_t b = feats.size(0), c = feats.size(1);
  TORCH_CHECK(grad.numel() == 1, op, ": grad must hold one value (the loss's gradient), got ", grad.sizes());
  TORCH_CHECK(grad.is_cuda() ? grad.device() == feats.device() : grad.dim() == 0, op,
              ": grad must be on ", feats.device(), " (or a CPU scalar), got ", grad.device());
  TORCH_CHECK(diff.device() == feats.device(), op, ": diff must be on ", feats.device(), ", got ", diff.device());
  TORCH_CHECK(diff.dim() == 3 && diff.size(0) == b && diff.size(1) == c && diff.size(2) == c, op,
              ": diff must be B x C x C with B = ", b, ", C = ", c, ", got ", diff.sizes());
  const c10::cuda::CUDAGuard guard(feats.device());
  // d/dF sum (sG - A)^2 = 2s (D + D^T) F = 4s sym(D) F: the kernels compute 4s D F, so they are given
  // sym(D), which is D itself for the symmetric targets of style transfer and right for any other.
  const auto sym = (diff + diff.transpose(1, 2)).mul_(0.5);
  if (feats.scalar_type() == at::kDouble) {
    const auto d = sym.to(at::kDouble);
    const auto factor = grad.to(d.options()).reshape({}) * (4.0 * scale);
    auto out = at::empty_like(feats);
    out.copy_(at::bmm(d, flat(feats)).mul_(factor).view(feats.sizes()));
    return out;
  }

  const Feats f = prepare(feats, /*need_tensor_cores=*/false);
  const auto g = grad.to(feats.device(), at::kFloat).contiguous();
  const auto d = sym.to(at::kFloat).contiguous();
  auto out = at::empty_like(f.t);  // F's dtype and memory format (contiguous or channels_last)
  if (out.numel() == 0) return out;
  C10_CUDA_CHECK(nst_style_loss_backward(g.data_ptr<float>(), f.t.data_ptr(), f.dtype, f.layout, int(f.b), int(f.c),
                                         f.hw, d.data_ptr<float>(), float(scale), out.data_ptr(), current_stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(nst_fast, CUDA, m) {
  m.impl("gram", &gram_cuda);
  m.impl("style_loss", &style_loss_cuda);
  m.impl("style_loss_backward", &style_loss_backward_cuda);
}

}  // namespace nst_fast
