// CUDA kernels for the nst_fast Gram / style-loss operators (see gram_kernels.cuh for the maths).
//
// Forward (gram_kernel): G = F F^T is a C x C x HW "NT" GEMM whose reduction dimension HW is huge
// (up to ~16M) while C is small (64..512). So:
//   * Output tiles are 64 x 64. Only tiles (ti, tj) with ti <= tj are computed (G is symmetric); the
//     epilogue writes each off-diagonal tile twice, once as computed and once mirrored. A diagonal tile
//     loads its single operand tile once and uses it as both A and B.
//   * Split-K: the HW positions are cut into `splits` equal chunks (multiples of the 32-deep k step) so
//     that tiles x batch x splits fills the GPU once (SMs x resident blocks per SM), with at least
//     kMinChunk positions per split. grid = (upper-triangle tiles, splits, batch).
//   * With splits > 1, every block atomicAdds its partial tile into a float32 workspace (zeroed by the
//     launcher) and then bumps a per-tile arrival counter; the block that arrives last (the classic
//     threadfence-reduction pattern) reads the finished tile back and runs the epilogue. With
//     splits == 1 the block runs the epilogue straight from its own accumulators.
//   * Epilogue: value = scale * G; Gram mode writes it; style-loss mode writes diff = value - A, and
//     reduces diff^2 over the block into one atomicAdd on the loss scalar (zeroed by the launcher).
//   * Main loop: one 32-deep k step per iteration; global -> registers (16-byte vector loads when
//     aligned, else masked scalar loads) for step k+1 is issued before the math of step k, which reads
//     shared memory. Shared tiles keep F's memory order (NCHW: [channel][k], NHWC: [k][channel]), so
//     channels_last input is read directly, without a transpose.
//   * bf16 / fp16: tensor cores through the WMMA API (m16n16k16, float32 accumulators; HMMA in SASS),
//     4 warps per block, each warp a 32 x 32 sub-tile. The operand layout (row/col-major fragments)
//     follows F's layout. float32: plain FMA (no TF32), 256 threads with a 4 x 4 micro-tile each.
//
// Backward (backward_kernel): dF = 4 scale grad (D @ F) is a C x HW x C GEMM with K = C only, so no
// split-K is needed: 64 (output channels) x 64 (positions) tiles, K in 32-deep steps, float32 FMA for
// every input type (D is float32; rounding it to bf16/fp16 for tensor cores would cost accuracy), the
// result rounded once to F's type and written in F's layout. Blocks are ordered channel-tile fastest so
// that the C/64 blocks reading the same positions of F run together and share them through L2.

#include "gram_kernels.cuh"

// Tensor cores through WMMA: its bf16 fragments need sm_80, and below sm_70 nvcuda::wmma does not exist
// at all, so the device passes for architectures before sm_80 see no WMMA code (there the launchers refuse
// 16-bit input, and the binding upcasts it to float32). The host pass sees all of it.
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define NST_WMMA 1
#include <mma.h>
#else
#define NST_WMMA 0
#endif

#include <algorithm>
#include <cstring>
#include <type_traits>

#define NST_HD __host__ __device__ __forceinline__
#ifdef __CUDA_ARCH__  // (the host pass of the __host__ __device__ helpers would warn about the pragma)
#define NST_UNROLL _Pragma("unroll")
#define NST_UNROLL_8 _Pragma("unroll 8")
#else
#define NST_UNROLL
#define NST_UNROLL_8
#endif

namespace nst_fast {
namespace cuda {
namespace {

constexpr int kTile = 64;         // output tile edge (forward: Gram entries; backward: channels and positions)
constexpr int kBK = 32;           // reduction depth of one main-loop step
constexpr int kStageLd = kTile + 4;  // row stride of the float32 staging tile (WMMA needs a multiple of 4)
constexpr int64_t kMinChunk = 1024;  // fewest positions per split-K slice (>= 32 steps per block)

template <typename T> constexpr bool kIs16Bit = sizeof(T) == 2;
template <typename T> constexpr int kVec = 16 / int(sizeof(T));  // elements per 16-byte vector

NST_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
NST_HD int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }  // (std::min is not __device__
NST_HD int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }  //  without --expt-relaxed-constexpr)

constexpr bool kArchHasMma = NST_WMMA;  // this pass compiles the 16-bit forward path (see the includes)

// ---------------------------------------------------------------------------------------------------
// Element access. A "chunk" is up to 16 bytes of consecutive elements held as raw 32-bit words (two
// 16-bit elements per word, the lower address in the low half), so one loader serves every type.

struct Chunk {
  uint32_t w[4];
};

// A row-major matrix view: element (r, c) at p[r * ld + c], valid for r < rows and c < cols.
// vec: p is 16-byte aligned and ld is a multiple of kVec<T>, so a chunk starting at a column that is a
// multiple of kVec<T> may be read as one 16-byte vector.
template <typename T>
struct View {
  const T* p;
  int64_t rows, cols, ld;
  bool vec;
};

// Loads elements (r, c .. c + kVec - 1), those outside the view as zero. c is a multiple of kVec.
template <typename T>
NST_HD Chunk load_chunk(const View<T>& m, int64_t r, int64_t c) {
  Chunk out = {{0u, 0u, 0u, 0u}};
  if (r >= m.rows || c >= m.cols) return out;
  const T* src = m.p + r * m.ld + c;
  const int64_t n = m.cols - c;  // valid elements from c on
  if (m.vec && n >= kVec<T>) {
#ifdef __CUDA_ARCH__
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(src));
#else
    const uint4 v = *reinterpret_cast<const uint4*>(src);
#endif
    out.w[0] = v.x, out.w[1] = v.y, out.w[2] = v.z, out.w[3] = v.w;
  } else if constexpr (kIs16Bit<T>) {
    const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
NST_UNROLL
    for (int e = 0; e < kVec<T>; ++e)
      if (e < n) out.w[e / 2] |= uint32_t(s[e]) << (16 * (e % 2));
  } else {
    const uint32_t* s = reinterpret_cast<const uint32_t*>(src);
NST_UNROLL
    for (int e = 0; e < kVec<T>; ++e)
      if (e < n) out.w[e] = s[e];
  }
  return out;
}

NST_HD void store_chunk_raw(void* dst, const Chunk& ch) {  // dst 16-byte aligned (shared memory)
  *reinterpret_cast<uint4*>(dst) = make_uint4(ch.w[0], ch.w[1], ch.w[2], ch.w[3]);
}

NST_HD float bits_to_float(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// Element e of a chunk, converted to float.
template <typename T>
NST_HD float chunk_elem(const Chunk& ch, int e) {
  if constexpr (std::is_same_v<T, float>) {
    return bits_to_float(ch.w[e]);
  } else {
    const uint16_t bits = uint16_t(ch.w[e / 2] >> (16 * (e % 2)));
    if constexpr (std::is_same_v<T, __half>) {
      __half_raw r;
      r.x = bits;
      return __half2float(__half(r));
    } else {
      __nv_bfloat16_raw r;
      r.x = bits;
      return __bfloat162float(__nv_bfloat16(r));
    }
  }
}

template <typename T>
NST_HD T from_float(float x);
template <>
NST_HD float from_float<float>(float x) { return x; }
template <>
NST_HD __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
NST_HD __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Writes v[0..n) (n <= 4) to dst in T: one 8- or 16-byte store when `vec` (dst aligned to 4 elements)
// and all four are valid, else element by element.
template <typename T>
NST_HD void store4(T* dst, const float (&v)[4], int n, bool vec) {
  if (vec && n == 4) {
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
      alignas(8) T t[4] = {from_float<T>(v[0]), from_float<T>(v[1]), from_float<T>(v[2]), from_float<T>(v[3])};
      *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(t);
    }
  } else {
    for (int e = 0; e < n; ++e) dst[e] = from_float<T>(v[e]);
  }
}

// Upper-triangle tile t (row-major order over ti <= tj) of an nt x nt tile grid.
NST_HD void tile_of(int t, int nt, int& ti, int& tj) {
  ti = 0;
  while (t >= nt - ti) {  // row ti holds nt - ti tiles
    t -= nt - ti;
    ++ti;
  }
  tj = ti + t;
}

// Split-K plan: `splits` slices of `chunk` positions (a multiple of kBK; the last may be shorter, none is
// empty), aiming at `target_blocks` blocks over `tiles` output tiles (tiles already counts the batch).
struct SplitPlan {
  int splits;
  int64_t chunk;
};
NST_HD SplitPlan plan_splits(int64_t hw, int64_t tiles, int64_t target_blocks) {
  int64_t splits = ceil_div(target_blocks, tiles);
  splits = max64(1, min64(min64(splits, ceil_div(hw, kMinChunk)), 65535));
  const int64_t chunk = max64(kBK, ceil_div(ceil_div(hw, splits), kBK) * kBK);
  splits = max64(1, ceil_div(hw, chunk));
  return {int(splits), chunk};
}

// ---------------------------------------------------------------------------------------------------
// Forward.

template <typename T, Layout L>
struct FwdCfg {
  static constexpr int kThreads = kIs16Bit<T> ? 128 : 256;
  // Shared operand tile in F's memory order: NCHW [64 channels][32 k], NHWC [32 k][64 channels], rows
  // padded by 16 bytes (keeps 16-byte / 32-byte alignment and spreads rows over the banks).
  static constexpr int kRows = L == Layout::NCHW ? kTile : kBK;
  static constexpr int kCols = L == Layout::NCHW ? kBK : kTile;
  static constexpr int kLd = kCols + kVec<T>;
  static constexpr int kChunksPerRow = kCols / kVec<T>;
  static constexpr int kChunks = kRows * kChunksPerRow / kThreads;  // per thread per operand
  static constexpr int kOperandBytes = kRows * kLd * int(sizeof(T));
  static constexpr int kSmemBytes = std::max(2 * kOperandBytes, kTile * kStageLd * 4);
  static_assert(kRows * kChunksPerRow % kThreads == 0, "chunks must divide evenly over the threads");
  static_assert(kOperandBytes % 32 == 0, "WMMA needs 32-byte aligned fragments");

  // Offset of operand element (channel m, depth k) within a shared tile.
  static NST_HD int at(int m, int k) { return L == Layout::NCHW ? m * kLd + k : k * kLd + m; }
  // Chunk q of the tile: its row and first column within the tile.
  static NST_HD int row(int q) { return q / kChunksPerRow; }
  static NST_HD int col(int q) { return q % kChunksPerRow * kVec<T>; }

  // This thread's chunks of the operand tile with channels c0.. and depths k0.. of F (F's rows are
  // channels for NCHW, positions for NHWC).
  static NST_HD void load(Chunk (&dst)[kChunks], const View<T>& F, int tid, int c0, int64_t k0) {
NST_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      const int q = tid + i * kThreads;
      dst[i] = L == Layout::NCHW ? load_chunk(F, c0 + row(q), k0 + col(q)) : load_chunk(F, k0 + row(q), c0 + col(q));
    }
  }
  static NST_HD void store(T* tile, const Chunk (&src)[kChunks], int tid) {
NST_UNROLL
    for (int i = 0; i < kChunks; ++i) {
      const int q = tid + i * kThreads;
      store_chunk_raw(tile + row(q) * kLd + col(q), src[i]);
    }
  }
};

// fp32 math for one kBK step: acc[r][s] += sum_k A[row_r, k] B[col_s, k] with
//   NCHW ([m][k] tiles): rows ty + 16 r, cols tx + 16 s; float4 reads along k, 4 k per step;
//   NHWC ([k][m] tiles): rows 4 ty + r,  cols 4 tx + s;  float4 reads along the channels.
// Either way a warp's reads are broadcasts or 16 distinct, bank-conflict-free float4s.
template <Layout L>
NST_HD int fma_row(int ty, int r) { return L == Layout::NCHW ? ty + 16 * r : 4 * ty + r; }
template <Layout L>
NST_HD int fma_col(int tx, int s) { return L == Layout::NCHW ? tx + 16 * s : 4 * tx + s; }

template <Layout L>
NST_HD void fma_step(const float* As, const float* Bs, int tx, int ty, float (&acc)[4][4]) {
  using Cfg = FwdCfg<float, L>;
  if constexpr (L == Layout::NCHW) {
NST_UNROLL
    for (int k = 0; k < kBK; k += 4) {
      float4 a[4], b[4];
NST_UNROLL
      for (int r = 0; r < 4; ++r) {
        a[r] = *reinterpret_cast<const float4*>(As + Cfg::at(ty + 16 * r, k));
        b[r] = *reinterpret_cast<const float4*>(Bs + Cfg::at(tx + 16 * r, k));
      }
NST_UNROLL
      for (int r = 0; r < 4; ++r)
NST_UNROLL
        for (int s = 0; s < 4; ++s) {
          acc[r][s] = fmaf(a[r].x, b[s].x, acc[r][s]);
          acc[r][s] = fmaf(a[r].y, b[s].y, acc[r][s]);
          acc[r][s] = fmaf(a[r].z, b[s].z, acc[r][s]);
          acc[r][s] = fmaf(a[r].w, b[s].w, acc[r][s]);
        }
    }
  } else {
NST_UNROLL_8
    for (int k = 0; k < kBK; ++k) {
      const float4 a4 = *reinterpret_cast<const float4*>(As + Cfg::at(4 * ty, k));
      const float4 b4 = *reinterpret_cast<const float4*>(Bs + Cfg::at(4 * tx, k));
      const float a[4] = {a4.x, a4.y, a4.z, a4.w}, b[4] = {b4.x, b4.y, b4.z, b4.w};
NST_UNROLL
      for (int r = 0; r < 4; ++r)
NST_UNROLL
        for (int s = 0; s < 4; ++s) acc[r][s] = fmaf(a[r], b[s], acc[r][s]);
    }
  }
}

// Sum over the block; the result is valid in thread 0. scratch: one float per warp.
template <int kThreads>
__device__ float block_sum(float v, float* scratch) {
NST_UNROLL
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < kThreads / 32 ? scratch[lane] : 0.f;
  if (warp == 0)
NST_UNROLL
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid = (upper-triangle tiles, splits, batch). See the file comment for the scheme.
template <typename T, Layout L>
__global__ void __launch_bounds__(FwdCfg<T, L>::kThreads)
    gram_kernel(const T* __restrict__ feats, int C, int64_t hw, int64_t chunk, bool vec, float scale,
                const float* __restrict__ target, int64_t target_stride, float* __restrict__ out,
                float* __restrict__ loss, float* __restrict__ ws, unsigned* __restrict__ counters) {
  using Cfg = FwdCfg<T, L>;
  constexpr int kThreads = Cfg::kThreads;
  constexpr bool kUseMma = kIs16Bit<T> && kArchHasMma;
  __shared__ __align__(128) unsigned char smem[Cfg::kSmemBytes];
  __shared__ float red[kThreads / 32];
  __shared__ bool is_last;
  T* As = reinterpret_cast<T*>(smem);
  T* Bs = reinterpret_cast<T*>(smem + Cfg::kOperandBytes);
  float* stage = reinterpret_cast<float*>(smem);  // reused after the main loop: [64][kStageLd]

  const int tid = threadIdx.x, splits = gridDim.y, b = blockIdx.z;
  const int nt = int(ceil_div(C, kTile));
  int ti, tj;
  tile_of(blockIdx.x, nt, ti, tj);
  const bool diag = ti == tj;
  const int64_t k_begin = blockIdx.y * chunk, k_end = min64(hw, k_begin + chunk);

  // F_b as a row-major matrix, limited to this split's positions (k < k_end).
  const T* f = feats + int64_t(b) * C * hw;
  const View<T> F = L == Layout::NCHW ? View<T>{f, C, k_end, hw, vec} : View<T>{f, k_end, C, C, vec};

  // ---- main loop: registers hold step k+1 while the math of step k runs from shared memory.
  Chunk ra[Cfg::kChunks], rb[Cfg::kChunks];
  Cfg::load(ra, F, tid, ti * kTile, k_begin);
  if (!diag) Cfg::load(rb, F, tid, tj * kTile, k_begin);

  const T* Bop = diag ? As : Bs;  // a diagonal tile multiplies its one operand tile by itself
  if constexpr (kIs16Bit<T> && !kArchHasMma) __trap();  // unreachable: the launcher refuses it
  // fp32: thread (tx, ty) owns a 4 x 4 micro-tile (see fma_step).
  const int tx = tid % 16, ty = tid / 16;
  float acc[4][4] = {};
#if NST_WMMA
  // 16-bit: warp w owns rows 32 (w / 2) .. +32 and columns 32 (w % 2) .. +32 of the tile.
  const int warp = tid / 32, wm = warp / 2 * 32, wn = warp % 2 * 32;
  using namespace nvcuda;
  using FragT = std::conditional_t<kIs16Bit<T>, T, __half>;  // keeps the fp32 instantiation well-formed
  using ALayout = std::conditional_t<L == Layout::NCHW, wmma::row_major, wmma::col_major>;
  using BLayout = std::conditional_t<L == Layout::NCHW, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> cfrag[2][2];
  if constexpr (kUseMma) {
NST_UNROLL
    for (int i = 0; i < 2; ++i)
NST_UNROLL
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(cfrag[i][j], 0.f);
  }
#endif

  for (int64_t k0 = k_begin; k0 < k_end; k0 += kBK) {
    __syncthreads();  // the previous step's math is done with the shared tiles
    Cfg::store(As, ra, tid);
    if (!diag) Cfg::store(Bs, rb, tid);
    __syncthreads();
    if (k0 + kBK < k_end) {
      Cfg::load(ra, F, tid, ti * kTile, k0 + kBK);
      if (!diag) Cfg::load(rb, F, tid, tj * kTile, k0 + kBK);
    }
    if constexpr (kUseMma) {
#if NST_WMMA
      // A = F_i (M x K), B = F_j^T (K x N). NCHW tiles are [m][k]: A row-major, B col-major;
      // NHWC tiles are [k][m]: A col-major, B row-major. Leading dimension: the tile's row stride.
      const FragT* a_src = reinterpret_cast<const FragT*>(As);
      const FragT* b_src = reinterpret_cast<const FragT*>(Bop);
NST_UNROLL
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, FragT, ALayout> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, FragT, BLayout> bf[2];
NST_UNROLL
        for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(a[i], a_src + Cfg::at(wm + 16 * i, kk), Cfg::kLd);
NST_UNROLL
        for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(bf[j], b_src + Cfg::at(wn + 16 * j, kk), Cfg::kLd);
NST_UNROLL
        for (int i = 0; i < 2; ++i)
NST_UNROLL
          for (int j = 0; j < 2; ++j) wmma::mma_sync(cfrag[i][j], a[i], bf[j], cfrag[i][j]);
      }
#endif
    } else if constexpr (!kIs16Bit<T>) {
      fma_step<L>(reinterpret_cast<const float*>(As), reinterpret_cast<const float*>(Bop), tx, ty, acc);
    }
  }

  // ---- accumulators -> staging tile stage[i][j] = sum_k F[ti*64 + i, k] F[tj*64 + j, k] (this split).
  __syncthreads();  // the operand tiles are dead; stage overlays them
  if constexpr (kUseMma) {
#if NST_WMMA
NST_UNROLL
    for (int i = 0; i < 2; ++i)
NST_UNROLL
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(stage + (wm + 16 * i) * kStageLd + wn + 16 * j, cfrag[i][j], kStageLd,
                                wmma::mem_row_major);
#endif
  } else {
NST_UNROLL
    for (int r = 0; r < 4; ++r)
NST_UNROLL
      for (int s = 0; s < 4; ++s) {
        stage[fma_row<L>(ty, r) * kStageLd + fma_col<L>(tx, s)] = acc[r][s];
      }
  }
  __syncthreads();

  const int i0 = ti * kTile, j0 = tj * kTile;
  const int64_t cc = int64_t(C) * C;
  // ---- split-K: add this slice into the workspace; the last block to arrive for the tile goes on.
  if (splits > 1) {
    float* w = ws + b * cc;
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int i = e / kTile, j = e % kTile;
      if (i0 + i < C && j0 + j < C) atomicAdd(w + int64_t(i0 + i) * C + j0 + j, stage[i * kStageLd + j]);
    }
    __threadfence();  // make this block's additions visible before it is counted
    __syncthreads();
    if (tid == 0)
      is_last = atomicAdd(counters + int64_t(b) * gridDim.x + blockIdx.x, 1u) == unsigned(splits - 1);
    __syncthreads();
    if (!is_last) return;  // uniform over the block
    __threadfence();
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int i = e / kTile, j = e % kTile;
      if (i0 + i < C && j0 + j < C) stage[i * kStageLd + j] = __ldcg(w + int64_t(i0 + i) * C + j0 + j);
    }
    __syncthreads();
  }

  // ---- epilogue: the tile (i, j), then, off the diagonal, its mirror image (j, i); both coalesced.
  float* o = out + b * cc;
  const float* a = target ? target + b * target_stride : nullptr;
  float sq = 0.f;
  for (int pass = 0; pass < (diag ? 1 : 2); ++pass) {
    const int r0 = pass == 0 ? i0 : j0, c0 = pass == 0 ? j0 : i0;  // output rows / columns of this pass
    for (int e = tid; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      if (r0 + r >= C || c0 + c >= C) continue;
      const int64_t at = int64_t(r0 + r) * C + c0 + c;
      float v = scale * (pass == 0 ? stage[r * kStageLd + c] : stage[c * kStageLd + r]);
      if (a) {
        v -= a[at];
        sq = fmaf(v, v, sq);
      }
      o[at] = v;
    }
  }
  if (a) {  // block-uniform
    sq = block_sum<kThreads>(sq, red);
    if (tid == 0) atomicAdd(loss, sq);
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward.

template <typename T, Layout L>
struct BwdCfg {
  static constexpr int kThreads = 256;
  static constexpr int kLd = kTile + 4;  // shared tiles Ds[k][channel], Fs[k][position], float32
  // D tile: 64 output channels x 32 k, float32, 8 chunks per row.
  static constexpr int kDChunks = kTile * kBK / 4 / kThreads;
  // F tile in F's memory order: NCHW rows = 32 k x 64 positions; NHWC rows = 64 positions x 32 k.
  static constexpr int kFCols = L == Layout::NCHW ? kTile : kBK;
  static constexpr int kFChunksPerRow = kFCols / kVec<T>;
  static constexpr int kFChunks = kTile * kBK / kVec<T> / kThreads;
  static_assert(kTile * kBK / kVec<T> % kThreads == 0 && kTile * kBK / 4 % kThreads == 0, "even split");

  // This thread's chunks of D[c0.., k0..] and of F[k0.., p0..] (channels k, positions p).
  static NST_HD void load(Chunk (&rd)[kDChunks], Chunk (&rf)[kFChunks], const View<float>& D, const View<T>& F,
                          int tid, int c0, int64_t p0, int k0) {
NST_UNROLL
    for (int i = 0; i < kDChunks; ++i) {  // row: output channel, column: k
      const int q = tid + i * kThreads;
      rd[i] = load_chunk(D, c0 + q / (kBK / 4), k0 + q % (kBK / 4) * 4);
    }
NST_UNROLL
    for (int i = 0; i < kFChunks; ++i) {
      const int q = tid + i * kThreads, r = q / kFChunksPerRow, c = q % kFChunksPerRow * kVec<T>;
      rf[i] = L == Layout::NCHW ? load_chunk(F, k0 + r, p0 + c) : load_chunk(F, p0 + r, k0 + c);
    }
  }
  // Both tiles to [k][.] order in float32: Ds[k][channel], Fs[k][position].
  static NST_HD void store(float* Ds, float* Fs, const Chunk (&rd)[kDChunks], const Chunk (&rf)[kFChunks], int tid) {
NST_UNROLL
    for (int i = 0; i < kDChunks; ++i) {
      const int q = tid + i * kThreads, r = q / (kBK / 4), c = q % (kBK / 4) * 4;
NST_UNROLL
      for (int e = 0; e < 4; ++e) Ds[(c + e) * kLd + r] = chunk_elem<float>(rd[i], e);
    }
NST_UNROLL
    for (int i = 0; i < kFChunks; ++i) {
      const int q = tid + i * kThreads, r = q / kFChunksPerRow, c = q % kFChunksPerRow * kVec<T>;
NST_UNROLL
      for (int e = 0; e < kVec<T>; ++e) {
        const float v = chunk_elem<T>(rf[i], e);
        if constexpr (L == Layout::NCHW) Fs[r * kLd + c + e] = v;  // row r = k, column = position
        else Fs[(c + e) * kLd + r] = v;                           // row r = position: transpose
      }
    }
  }

  // acc[r][s] += sum_k D[4 cg + r, k] F[k, 4 pg + s] over one kBK step (float4 shared reads).
  static NST_HD void step(const float* Ds, const float* Fs, int cg, int pg, float (&acc)[4][4]) {
NST_UNROLL_8
    for (int k = 0; k < kBK; ++k) {
      const float4 d4 = *reinterpret_cast<const float4*>(Ds + k * kLd + 4 * cg);
      const float4 f4 = *reinterpret_cast<const float4*>(Fs + k * kLd + 4 * pg);
      const float d[4] = {d4.x, d4.y, d4.z, d4.w}, fv[4] = {f4.x, f4.y, f4.z, f4.w};
NST_UNROLL
      for (int r = 0; r < 4; ++r)
NST_UNROLL
        for (int s = 0; s < 4; ++s) acc[r][s] = fmaf(d[r], fv[s], acc[r][s]);
    }
  }

  // Writes factor * acc for channels c.. c+3 and positions p.. p+3 of one batch item (out) in F's layout.
  static NST_HD void write(T* out, int C, int64_t hw, int c, int64_t p, const float (&acc)[4][4], float factor,
                           bool vec_out) {
    if constexpr (L == Layout::NCHW) {  // 4 consecutive positions of each of 4 channel rows
NST_UNROLL
      for (int r = 0; r < 4; ++r) {
        if (c + r >= C || p >= hw) continue;
        const float v[4] = {acc[r][0] * factor, acc[r][1] * factor, acc[r][2] * factor, acc[r][3] * factor};
        store4(out + int64_t(c + r) * hw + p, v, int(min64(4, hw - p)), vec_out);
      }
    } else {  // 4 consecutive channels of each of 4 positions
NST_UNROLL
      for (int s = 0; s < 4; ++s) {
        if (p + s >= hw || c >= C) continue;
        const float v[4] = {acc[0][s] * factor, acc[1][s] * factor, acc[2][s] * factor, acc[3][s] * factor};
        store4(out + (p + s) * C + c, v, int(min64(4, C - c)), vec_out);
      }
    }
  }
};

// grid = (channel tiles x position tiles, batch), channel tile fastest.
template <typename T, Layout L>
__global__ void __launch_bounds__(256)
    backward_kernel(const float* __restrict__ grad, const T* __restrict__ feats, const float* __restrict__ diff,
                    int C, int64_t hw, bool vec_f, bool vec_d, bool vec_out, float scale, T* __restrict__ out) {
  using Cfg = BwdCfg<T, L>;
  __shared__ __align__(16) float Ds[kBK * Cfg::kLd];
  __shared__ __align__(16) float Fs[kBK * Cfg::kLd];

  const int tid = threadIdx.x, b = blockIdx.y;
  const int nct = int(ceil_div(C, kTile));
  const int c0 = int(blockIdx.x % nct) * kTile;
  const int64_t p0 = int64_t(blockIdx.x / nct) * kTile;
  const int64_t off = int64_t(b) * C * hw;
  const View<float> D{diff + int64_t(b) * C * C, C, C, C, vec_d};
  const View<T> F = L == Layout::NCHW ? View<T>{feats + off, C, hw, hw, vec_f} : View<T>{feats + off, hw, C, C, vec_f};

  Chunk rd[Cfg::kDChunks], rf[Cfg::kFChunks];
  // Thread micro-tile: 4 output channels (cg) x 4 positions (pg). The thread index that varies fastest
  // (tx) runs along the output's contiguous dimension, so that the stores coalesce.
  const int tx = tid % 16, ty = tid / 16;
  const int cg = L == Layout::NCHW ? ty : tx, pg = L == Layout::NCHW ? tx : ty;
  float acc[4][4] = {};
  Cfg::load(rd, rf, D, F, tid, c0, p0, 0);
  for (int k0 = 0; k0 < C; k0 += kBK) {
    __syncthreads();
    Cfg::store(Ds, Fs, rd, rf, tid);
    __syncthreads();
    if (k0 + kBK < C) Cfg::load(rd, rf, D, F, tid, c0, p0, k0 + kBK);
    Cfg::step(Ds, Fs, cg, pg, acc);
  }

  Cfg::write(out + int64_t(b) * C * hw, C, hw, c0 + 4 * cg, p0 + 4 * pg, acc, 4.f * scale * __ldg(grad), vec_out);
}

// ---------------------------------------------------------------------------------------------------
// Host side.

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int64_t workspace_bytes(int batch, int channels) {
  const int64_t nt = ceil_div(channels, kTile);
  return int64_t(batch) * channels * channels * 4 + int64_t(batch) * (nt * (nt + 1) / 2) * 4;
}

int device_cc_major(cudaError_t& err) {
  int dev = 0, major = 0;
  if ((err = cudaGetDevice(&dev)) == cudaSuccess)
    err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
  return major;
}

}  // namespace

template <typename T, Layout L>
cudaError_t gram_forward(const T* feats, int batch, int channels, int64_t hw, float scale, const float* target,
                         int64_t target_stride, float* out, float* loss, void* workspace, size_t workspace_bytes_,
                         cudaStream_t stream) {
  using Cfg = FwdCfg<T, L>;
  cudaError_t err;
  if (target && (err = cudaMemsetAsync(loss, 0, sizeof(float), stream)) != cudaSuccess) return err;
  if (batch <= 0 || channels <= 0) return batch < 0 || channels < 0 || hw < 0 ? cudaErrorInvalidValue : cudaSuccess;
  if (hw < 0 || batch > 65535) return cudaErrorInvalidValue;
  if (kIs16Bit<T>) {
    const int major = device_cc_major(err);
    if (err != cudaSuccess) return err;
    if (major < 8) return cudaErrorNotSupported;
  }

  // Split-K: fill every SM with as many blocks as fit on it at once.
  auto kernel = gram_kernel<T, L>;
  int dev = 0, sms = 0, per_sm = 0;
  if ((err = cudaGetDevice(&dev)) != cudaSuccess) return err;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return err;
  if ((err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Cfg::kThreads, 0)) != cudaSuccess)
    return err;
  const int nt = int(ceil_div(channels, kTile)), tiles = nt * (nt + 1) / 2;
  const SplitPlan plan = plan_splits(hw, int64_t(tiles) * batch, int64_t(sms) * std::max(per_sm, 1));

  float* ws = nullptr;
  unsigned* counters = nullptr;
  if (plan.splits > 1) {
    const int64_t need = workspace_bytes(batch, channels);
    if (!workspace || int64_t(workspace_bytes_) < need || !aligned(workspace, 16)) return cudaErrorInvalidValue;
    if ((err = cudaMemsetAsync(workspace, 0, size_t(need), stream)) != cudaSuccess) return err;
    ws = static_cast<float*>(workspace);
    counters = reinterpret_cast<unsigned*>(ws + int64_t(batch) * channels * channels);
  }
  const bool vec = aligned(feats, 16) && (L == Layout::NCHW ? hw : channels) % kVec<T> == 0;
  kernel<<<dim3(tiles, plan.splits, batch), Cfg::kThreads, 0, stream>>>(
      feats, channels, hw, plan.chunk, vec, scale, target, target_stride, out, loss, ws, counters);
  return cudaGetLastError();
}

template <typename T, Layout L>
cudaError_t style_loss_backward(const float* grad, const T* feats, const float* diff, int batch, int channels,
                                int64_t hw, float scale, T* grad_feats, cudaStream_t stream) {
  if (batch < 0 || channels < 0 || hw < 0 || batch > 65535) return cudaErrorInvalidValue;
  if (batch == 0 || channels == 0 || hw == 0) return cudaSuccess;
  const int64_t blocks = ceil_div(channels, kTile) * ceil_div(hw, kTile);
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t inner = L == Layout::NCHW ? hw : channels;  // length of F's contiguous rows
  const bool vec_f = aligned(feats, 16) && inner % kVec<T> == 0;
  const bool vec_d = aligned(diff, 16) && channels % 4 == 0;
  const bool vec_out = aligned(grad_feats, 4 * sizeof(T)) && inner % 4 == 0;
  backward_kernel<T, L><<<dim3(unsigned(blocks), batch), BwdCfg<T, L>::kThreads, 0, stream>>>(
      grad, feats, diff, channels, hw, vec_f, vec_d, vec_out, scale, grad_feats);
  return cudaGetLastError();
}

// Explicit instantiations: every (type, layout) pair, so that their SASS is in this object.
#define NST_INSTANTIATE(T, L)                                                                              \
  template cudaError_t gram_forward<T, L>(const T*, int, int, int64_t, float, const float*, int64_t, float*, \
                                          float*, void*, size_t, cudaStream_t);                           \
  template cudaError_t style_loss_backward<T, L>(const float*, const T*, const float*, int, int, int64_t,    \
                                                 float, T*, cudaStream_t);
NST_INSTANTIATE(float, Layout::NCHW)
NST_INSTANTIATE(float, Layout::NHWC)
NST_INSTANTIATE(__half, Layout::NCHW)
NST_INSTANTIATE(__half, Layout::NHWC)
NST_INSTANTIATE(__nv_bfloat16, Layout::NCHW)
NST_INSTANTIATE(__nv_bfloat16, Layout::NHWC)
#undef NST_INSTANTIATE

}  // namespace cuda
}  // namespace nst_fast

// ---------------------------------------------------------------------------------------------------
// C API: dispatch on (dtype, layout) to the typed launchers.

namespace {
using nst_fast::cuda::Layout;

template <template <typename, Layout> class Fn, typename... Args>
cudaError_t dispatch(nst_dtype dtype, nst_layout layout, Args&&... args) {
  const bool nhwc = layout == NST_NHWC;
  if (layout != NST_NCHW && layout != NST_NHWC) return cudaErrorInvalidValue;
  switch (dtype) {
    case NST_FLOAT32:
      return nhwc ? Fn<float, Layout::NHWC>::run(args...) : Fn<float, Layout::NCHW>::run(args...);
    case NST_FLOAT16:
      return nhwc ? Fn<__half, Layout::NHWC>::run(args...) : Fn<__half, Layout::NCHW>::run(args...);
    case NST_BFLOAT16:
      return nhwc ? Fn<__nv_bfloat16, Layout::NHWC>::run(args...) : Fn<__nv_bfloat16, Layout::NCHW>::run(args...);
  }
  return cudaErrorInvalidValue;
}

template <typename T, Layout L>
struct Forward {
  static cudaError_t run(const void* f, int b, int c, int64_t hw, float scale, const float* target, int64_t stride,
                         float* out, float* loss, void* ws, size_t ws_bytes, cudaStream_t s) {
    return nst_fast::cuda::gram_forward<T, L>(static_cast<const T*>(f), b, c, hw, scale, target, stride, out, loss,
                                              ws, ws_bytes, s);
  }
};

template <typename T, Layout L>
struct Backward {
  static cudaError_t run(const float* grad, const void* f, int b, int c, int64_t hw, const float* diff, float scale,
                         void* out, cudaStream_t s) {
    return nst_fast::cuda::style_loss_backward<T, L>(grad, static_cast<const T*>(f), diff, b, c, hw, scale,
                                                     static_cast<T*>(out), s);
  }
};
}  // namespace

extern "C" {

size_t nst_gram_workspace_bytes(int batch, int channels) {
  return batch > 0 && channels > 0 ? size_t(nst_fast::cuda::workspace_bytes(batch, channels)) : 0;
}

int nst_tensor_cores_supported(int device) {
  int major = 0;
  return cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major >= 8;
}

cudaError_t nst_gram(const void* feats, nst_dtype dtype, nst_layout layout, int batch, int channels, int64_t hw,
                     float scale, float* gram, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  return dispatch<Forward>(dtype, layout, feats, batch, channels, hw, scale, static_cast<const float*>(nullptr),
                           int64_t(0), gram, static_cast<float*>(nullptr), workspace, workspace_bytes, stream);
}

cudaError_t nst_style_loss(const void* feats, nst_dtype dtype, nst_layout layout, int batch, int channels,
                           int64_t hw, const float* target, int target_batched, float scale, float* diff,
                           float* loss, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (!target || !loss) return cudaErrorInvalidValue;
  const int64_t stride = target_batched ? int64_t(channels) * channels : 0;
  return dispatch<Forward>(dtype, layout, feats, batch, channels, hw, scale, target, stride, diff, loss, workspace,
                           workspace_bytes, stream);
}

cudaError_t nst_style_loss_backward(const float* grad, const void* feats, nst_dtype dtype, nst_layout layout,
                                    int batch, int channels, int64_t hw, const float* diff, float scale,
                                    void* grad_feats, cudaStream_t stream) {
  return dispatch<Backward>(dtype, layout, grad, feats, batch, channels, hw, diff, scale, grad_feats, stream);
}

}  // extern "C"
