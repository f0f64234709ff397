// Framework-free CUDA kernels for the nst_fast Gram-matrix and style-loss operators.
//
// No torch / ATen here: raw device pointers, a cudaStream_t, and launchers that return cudaError_t, so
// that the same kernels can back the PyTorch extension (ops_cuda.cu), an ONNX Runtime custom op or a
// TensorRT plugin.
//
// Notation. F is one batch item of the features: C channels x HW positions (HW = H*W), stored either
//   NCHW  (contiguous):    F[c, p] at c*HW + p   (row-major C x HW)
//   NHWC  (channels_last): F[c, p] at p*C + c    (row-major HW x C)
// and batch item b starts at b*C*HW elements. Element types: float, __half, __nv_bfloat16. Everything
// that is accumulated (G, the loss) is float32.
//
//   gram:                 G_b = scale * F_b F_b^T                                   (B x C x C, float32)
//   style loss forward:   D_b = scale * F_b F_b^T - A_b,  loss = sum_b sum_ij D_b[i,j]^2
//                         A is C x C float32, one matrix for every b or one per b (target_batched)
//   style loss backward:  dF_b = 4 * scale * grad * (D_b @ F_b)   in F's type and layout
//                         (grad: device pointer to one float; D as written by the forward)
//
// All pointers are device pointers; all work is enqueued on `stream` (the launchers may also enqueue
// cudaMemsetAsync on it). Nothing is synchronized.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum nst_dtype { NST_FLOAT32 = 0, NST_FLOAT16 = 1, NST_BFLOAT16 = 2 } nst_dtype;
typedef enum nst_layout { NST_NCHW = 0, NST_NHWC = 1 } nst_layout;

// Bytes of scratch memory that nst_gram / nst_style_loss need for B x C x C (split-K partial sums and
// per-tile arrival counters). The launchers zero it themselves; its contents need not be kept.
// Alignment: 16 bytes (any allocator's alignment is fine).
size_t nst_gram_workspace_bytes(int batch, int channels);

// 1 when the 16-bit (tensor-core) forward kernels can run on `device` (compute capability >= 8.0),
// else 0 (the forward launchers then return cudaErrorNotSupported for float16/bfloat16 input).
int nst_tensor_cores_supported(int device);

// gram[b] = scale * F_b F_b^T, written in full (both triangles), B x C x C float32.
cudaError_t nst_gram(const void* feats, nst_dtype dtype, nst_layout layout, int batch, int channels,
                     int64_t hw, float scale, float* gram, void* workspace, size_t workspace_bytes,
                     cudaStream_t stream);

// diff[b] = scale * F_b F_b^T - A (B x C x C float32, both triangles) and *loss = sum diff^2 (one float,
// zeroed here first). target: C x C float32 (target_batched = 0) or B x C x C (target_batched = 1).
cudaError_t nst_style_loss(const void* feats, nst_dtype dtype, nst_layout layout, int batch, int channels,
                           int64_t hw, const float* target, int target_batched, float scale, float* diff,
                           float* loss, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// grad_feats = 4 * scale * (*grad) * (diff_b @ F_b), in F's dtype and layout (same shape as feats).
cudaError_t nst_style_loss_backward(const float* grad, const void* feats, nst_dtype dtype, nst_layout layout,
                                    int batch, int channels, int64_t hw, const float* diff, float scale,
                                    void* grad_feats, cudaStream_t stream);

#ifdef __cplusplus
}  // extern "C"

namespace nst_fast {
namespace cuda {

enum class Layout { NCHW, NHWC };

// The typed launchers behind the C API; explicitly instantiated in gram_kernels.cu for
// T in {float, __half, __nv_bfloat16} x both layouts.
//
// target == nullptr: Gram mode (out = scale F F^T, loss unused, may be null).
// target != nullptr: style-loss mode (out = scale F F^T - A, *loss = sum out^2); target_stride is
//                    C*C when A has one matrix per batch item, 0 when it is broadcast.
template <typename T, Layout L>
cudaError_t gram_forward(const T* feats, int batch, int channels, int64_t hw, float scale, const float* target,
                         int64_t target_stride, float* out, float* loss, void* workspace, size_t workspace_bytes,
                         cudaStream_t stream);

template <typename T, Layout L>
cudaError_t style_loss_backward(const float* grad, const T* feats, const float* diff, int batch, int channels,
                                int64_t hw, float scale, T* grad_feats, cudaStream_t stream);

}  // namespace cuda
}  // namespace nst_fast
#endif  // __cplusplus
