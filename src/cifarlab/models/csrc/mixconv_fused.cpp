// Fused mix-conv for CPUs: a 3x3, stride-1, padding-1 convolution whose kernel is, per sample n, the mix
// sum_k a[n,k] W_k of K kernels, computed without ever holding a whole per-sample kernel in memory.
//
// Why: a per-sample kernel (C_out x 9 C_in) is used for only H*W multiply-adds per element, so on 8x8 and 4x4
// maps building all of them and moving them through memory costs more than the convolution itself, and the
// alternative (K ordinary convolutions) pays K times the FLOPs. Here the K kernels are cut into tiles that stay
// in a core's L2 cache; every sample streams through a tile: its patches gathered (implicit im2col, only the
// tile's columns), its kernel tile mixed from the K resident tiles, and one small GEMM (oneDNN's brgemm, via
// ATen) accumulates into its output. FLOPs: the one convolution's, plus K/(H*W) of them to mix the tiles.
//
// Layouts (all contiguous): x (N, H, W, C_in) i.e. channels_last; a (N, K) mixing weights;
// bank (K, Q, C_out) with Q = 9*C_in, row q = tap*C_in + c (tap = 3*dy + dx), i.e. the weights as (K, ky, kx,
// C_in, C_out); bank_t (K, C_out, Q), the same weights as (K, C_out, ky, kx, C_in), for the input gradient;
// outputs and output gradients (N, H, W, C_out). fp32 throughout (the seed recipes train in fp32).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

using at::Tensor;

namespace {

constexpr int64_t kOutTile = 64;             // output channels per tile: four AVX-512 vectors
constexpr int64_t kTileBytes = 384 << 10;    // the K resident kernel tiles, with room in a 1 MiB L2 for the rest
constexpr int64_t kPatchBytes = 192 << 10;   // one sample's gathered patches for one tile
constexpr int64_t kMixBytes = 48 << 10;      // a group's mixed kernel rows, used from L1/L2 right after mixing
constexpr int64_t kGroup = 2;                // samples mixed per pass over the resident tile (share its loads)

struct Geometry {
  int64_t n, h, w, c_in, c_out, k, q, hw;
  int64_t q_tile, o_tile;
};

Geometry geometry(const Tensor& x, const Tensor& bank, int64_t c_out) {
  Geometry g;
  g.n = x.size(0); g.h = x.size(1); g.w = x.size(2); g.c_in = x.size(3);
  g.k = bank.size(0); g.q = 9 * g.c_in; g.c_out = c_out; g.hw = g.h * g.w;
  g.o_tile = std::min(c_out, kOutTile);
  int64_t rows = kTileBytes / (g.k * g.o_tile * 4);
  rows = std::min(rows, std::max<int64_t>(kPatchBytes / (g.hw * 4), 16));
  g.q_tile = std::max<int64_t>(8, std::min(rows, g.q));
  return g;
}

// cols[p][j] = x[n][y+dy-1][x+dx-1][c] for q = q0 + j = tap*C_in + c (zero outside the image): the tile's
// columns of sample n's im2col matrix, rows p = y*W + x, ld = width.
void gather_patches(const float* xn, const Geometry& g, int64_t q0, int64_t width, float* cols) {
  int64_t j = 0;
  while (j < width) {
    const int64_t q = q0 + j, tap = q / g.c_in, c = q % g.c_in;
    const int64_t run = std::min(width - j, g.c_in - c);
    const int64_t dy = tap / 3 - 1, dx = tap % 3 - 1;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t sy = y + dy;
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const int64_t sx = xx + dx;
        float* dst = cols + (y * g.w + xx) * width + j;
        if (sy < 0 || sy >= g.h || sx < 0 || sx >= g.w) {
          std::memset(dst, 0, run * sizeof(float));
        } else {
          std::memcpy(dst, xn + (sy * g.w + sx) * g.c_in + c, run * sizeof(float));
        }
      }
    }
    j += run;
  }
}

// grad_x[n] += the tile's columns of an im2col-shaped gradient (rows p, ld = width): col2im for one tile.
void scatter_patches(const float* cols, const Geometry& g, int64_t q0, int64_t width, float* gxn) {
  int64_t j = 0;
  while (j < width) {
    const int64_t q = q0 + j, tap = q / g.c_in, c = q % g.c_in;
    const int64_t run = std::min(width - j, g.c_in - c);
    const int64_t dy = tap / 3 - 1, dx = tap % 3 - 1;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t sy = y + dy;
      if (sy < 0 || sy >= g.h) continue;
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const int64_t sx = xx + dx;
        if (sx < 0 || sx >= g.w) continue;
        const float* src = cols + (y * g.w + xx) * width + j;
        float* dst = gxn + (sy * g.w + sx) * g.c_in + c;
#pragma omp simd
        for (int64_t i = 0; i < run; ++i) dst[i] += src[i];
      }
    }
    j += run;
  }
}

// The K kernels' tile (rows r < rows of Q, columns o < cols of C_out) copied into one contiguous block laid out
// (rows, K, cols): read in place, rows C_out floats apart in K planes a power of two apart map onto a few cache
// sets and evict each other long before the L2 is full, so the tile would not stay resident.
void pack_tile(const float* bank, int64_t k, int64_t plane, int64_t ld_bank, int64_t rows, int64_t cols,
               float* packed) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kk = 0; kk < k; ++kk)
      std::memcpy(packed + (r * k + kk) * cols, bank + kk * plane + r * ld_bank, cols * sizeof(float));
}

// Vectors of 16 floats through GCC's vector extensions: one AVX-512 register, two AVX2 ones, whatever the
// compiling machine has (the extension is built on the machine that runs it, with -march=native).
typedef float vec16 __attribute__((vector_size(64)));
inline vec16 load16(const float* p) { vec16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof v); }

// out_g[r][o] = sum_k a[g][k] * packed[r][k][o] for G samples g at once: their rows of their mixed kernels.
// K and G known at compile time keep each output vector in a register (no K-fold store), and G samples share
// each load of the resident tile: L2 bandwidth, not arithmetic, bounds this loop.
template <int K, int G>
void mix_rows_kg(const float* a, const float* packed, int64_t rows, int64_t cols, float* out, int64_t out_stride) {
  float ak[G][K];
  for (int g = 0; g < G; ++g)
    for (int kk = 0; kk < K; ++kk) ak[g][kk] = a[g * K + kk];
  const int64_t vec_cols = cols / 16 * 16;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = packed + r * K * cols;
    float* dst = out + r * cols;
    for (int64_t o = 0; o < vec_cols; o += 16) {
      vec16 v[K];
      for (int kk = 0; kk < K; ++kk) v[kk] = load16(src + kk * cols + o);
      for (int g = 0; g < G; ++g) {
        vec16 acc = ak[g][0] * v[0];
        for (int kk = 1; kk < K; ++kk) acc += ak[g][kk] * v[kk];
        store16(dst + g * out_stride + o, acc);
      }
    }
    for (int64_t o = vec_cols; o < cols; ++o)
      for (int g = 0; g < G; ++g) {
        float acc = 0.f;
        for (int kk = 0; kk < K; ++kk) acc += ak[g][kk] * src[kk * cols + o];
        dst[g * out_stride + o] = acc;
      }
  }
}

template <int K>
bool mix_k(const float* a, const float* packed, int64_t g, int64_t rows, int64_t cols, float* out, int64_t stride) {
  switch (g) {
    case 1: mix_rows_kg<K, 1>(a, packed, rows, cols, out, stride); return true;
    case 2: mix_rows_kg<K, 2>(a, packed, rows, cols, out, stride); return true;
    case 3: mix_rows_kg<K, 3>(a, packed, rows, cols, out, stride); return true;
    case 4: mix_rows_kg<K, 4>(a, packed, rows, cols, out, stride); return true;
  }
  return false;
}

// g samples' (a: g x k) rows of their mixed kernels, sample i's at out + i * stride.
void mix_tile(const float* a, const float* packed, int64_t k, int64_t g, int64_t rows, int64_t cols, float* out,
              int64_t stride) {
  bool done = false;
  switch (k) {
    case 1: done = mix_k<1>(a, packed, g, rows, cols, out, stride); break;
    case 2: done = mix_k<2>(a, packed, g, rows, cols, out, stride); break;
    case 3: done = mix_k<3>(a, packed, g, rows, cols, out, stride); break;
    case 4: done = mix_k<4>(a, packed, g, rows, cols, out, stride); break;
    case 8: done = mix_k<8>(a, packed, g, rows, cols, out, stride); break;
  }
  if (done) return;
  for (int64_t i = 0; i < g; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < cols; ++o) {
        float acc = 0.f;
        for (int64_t kk = 0; kk < k; ++kk) acc += a[i * k + kk] * packed[(r * k + kk) * cols + o];
        out[i * stride + r * cols + o] = acc;
      }
}

// For G samples' kernel-gradient rows e_g (rows x cols, e_g = e + g * e_stride): acc[r][k][o] += sum_g a[g][k] *
// e_g[r][o] (the K kernels' gradient, tile laid out like `packed`) and grad_a[g][k] += <e_g, packed[.][k][.]>.
// Each e vector is loaded once for all K, each packed/acc vector once for all G samples, and the G*K dot
// products stay in vector registers until the end.
template <int K, int G>
void reduce_rows_kg(const float* a, const float* packed, const float* e, int64_t e_stride, int64_t rows,
                    int64_t cols, float* acc, float* grad_a) {
  float ak[G][K], ga[G][K] = {};
  vec16 gav[G][K];
  for (int g = 0; g < G; ++g)
    for (int kk = 0; kk < K; ++kk) { ak[g][kk] = a[g * K + kk]; gav[g][kk] = vec16{}; }
  const int64_t vec_cols = cols / 16 * 16;
  for (int64_t r = 0; r < rows; ++r) {
    const float* w = packed + r * K * cols;
    float* dw = acc + r * K * cols;
    const float* er = e + r * cols;
    for (int64_t o = 0; o < vec_cols; o += 16) {
      vec16 ev[G];
      for (int g = 0; g < G; ++g) ev[g] = load16(er + g * e_stride + o);
      for (int kk = 0; kk < K; ++kk) {
        const vec16 wk = load16(w + kk * cols + o);
        vec16 d = load16(dw + kk * cols + o);
        for (int g = 0; g < G; ++g) { d += ak[g][kk] * ev[g]; gav[g][kk] += ev[g] * wk; }
        store16(dw + kk * cols + o, d);
      }
    }
    for (int64_t o = vec_cols; o < cols; ++o)
      for (int kk = 0; kk < K; ++kk)
        for (int g = 0; g < G; ++g) {
          const float ev = er[g * e_stride + o];
          dw[kk * cols + o] += ak[g][kk] * ev;
          ga[g][kk] += ev * w[kk * cols + o];
        }
  }
  for (int g = 0; g < G; ++g)
    for (int kk = 0; kk < K; ++kk) {
      float sum = ga[g][kk];
      for (int l = 0; l < 16; ++l) sum += gav[g][kk][l];
      grad_a[g * K + kk] += sum;
    }
}

template <int K>
bool reduce_k(const float* a, const float* packed, const float* e, int64_t e_stride, int64_t g, int64_t rows,
              int64_t cols, float* acc, float* grad_a) {
  switch (g) {
    case 1: reduce_rows_kg<K, 1>(a, packed, e, e_stride, rows, cols, acc, grad_a); return true;
    case 2: reduce_rows_kg<K, 2>(a, packed, e, e_stride, rows, cols, acc, grad_a); return true;
  }
  return false;
}

void reduce_tile(const float* a, const float* packed, const float* e, int64_t e_stride, int64_t k, int64_t g,
                 int64_t rows, int64_t cols, float* acc, float* grad_a) {
  bool done = false;
  switch (k) {
    case 1: done = reduce_k<1>(a, packed, e, e_stride, g, rows, cols, acc, grad_a); break;
    case 2: done = reduce_k<2>(a, packed, e, e_stride, g, rows, cols, acc, grad_a); break;
    case 3: done = reduce_k<3>(a, packed, e, e_stride, g, rows, cols, acc, grad_a); break;
    case 4: done = reduce_k<4>(a, packed, e, e_stride, g, rows, cols, acc, grad_a); break;
    case 8: done = reduce_k<8>(a, packed, e, e_stride, g, rows, cols, acc, grad_a); break;
  }
  if (done) return;
  for (int64_t i = 0; i < g; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t o = 0; o < cols; ++o) {
          const float ev = e[i * e_stride + r * cols + o];
          acc[(r * k + kk) * cols + o] += a[i * k + kk] * ev;
          grad_a[i * k + kk] += ev * packed[(r * k + kk) * cols + o];
        }
}

// The inverse of pack_tile: the tile (rows, K, cols) written into the (K, rows, ld_bank) layout.
void unpack_tile(const float* packed, int64_t k, int64_t plane, int64_t ld_bank, int64_t rows, int64_t cols,
                 float* bank) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t kk = 0; kk < k; ++kk)
      std::memcpy(bank + kk * plane + r * ld_bank, packed + (r * k + kk) * cols, cols * sizeof(float));
}

// Units of parallel work: (output-channel tile, block of samples), tile-major so that consecutive units
// of one thread share their resident kernel tiles.
struct Units {
  int64_t o_tiles, sample_blocks, block;
};

Units split(const Geometry& g, int64_t o_tiles) {
  const int64_t threads = at::get_num_threads();
  Units u;
  u.o_tiles = o_tiles;
  u.sample_blocks = std::max<int64_t>(1, std::min(g.n, (2 * threads + o_tiles - 1) / o_tiles));
  u.block = (g.n + u.sample_blocks - 1) / u.sample_blocks;
  u.sample_blocks = (g.n + u.block - 1) / u.block;
  return u;
}

Tensor forward(const Tensor& x, const Tensor& a, const Tensor& bank, int64_t c_out) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && a.scalar_type() == at::kFloat && bank.scalar_type() == at::kFloat,
              "mixconv_fused: fp32 only");
  TORCH_CHECK(x.is_contiguous() && a.is_contiguous() && bank.is_contiguous(), "mixconv_fused: contiguous inputs");
  const Geometry g = geometry(x, bank, c_out);
  Tensor out = at::empty({g.n, g.h, g.w, c_out}, x.options());
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = bank.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t o_tiles = (c_out + g.o_tile - 1) / g.o_tile;
  const Units u = split(g, o_tiles);
  const int64_t group = kGroup;
  const int64_t mix_rows = std::max<int64_t>(8, kMixBytes / (group * g.o_tile * 4));
  at::parallel_for(0, u.o_tiles * u.sample_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cols(group * g.hw * g.q_tile), kernel(group * mix_rows * g.o_tile),
        tile(g.k * g.q_tile * g.o_tile);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t ot = unit / u.sample_blocks, sb = unit % u.sample_blocks;
      const int64_t o0 = ot * g.o_tile, ow = std::min(g.o_tile, c_out - o0);
      const int64_t n0 = sb * u.block, n1 = std::min(g.n, n0 + u.block);
      for (int64_t q0 = 0; q0 < g.q; q0 += g.q_tile) {
        const int64_t qw = std::min(g.q_tile, g.q - q0);
        pack_tile(bp + q0 * c_out + o0, g.k, g.q * c_out, c_out, qw, ow, tile.data());
        for (int64_t n = n0; n < n1; n += group) {
          const int64_t gs = std::min(group, n1 - n);
          for (int64_t i = 0; i < gs; ++i)
            gather_patches(xp + (n + i) * g.hw * g.c_in, g, q0, qw, cols.data() + i * g.hw * qw);
          for (int64_t r0 = 0; r0 < qw; r0 += mix_rows) {
            const int64_t rw = std::min(mix_rows, qw - r0);
            mix_tile(ap + n * g.k, tile.data() + r0 * g.k * ow, g.k, gs, rw, ow, kernel.data(), mix_rows * ow);
            for (int64_t i = 0; i < gs; ++i)
              at::native::cpublas::brgemm(g.hw, ow, rw, qw, ow, c_out, /*add_C=*/q0 + r0 > 0,
                                          cols.data() + i * g.hw * qw + r0, kernel.data() + i * mix_rows * ow,
                                          op + (n + i) * g.hw * c_out + o0);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return out;
}

// d loss / d x: per sample, D = grad_out[n] (HW x C_out) @ mixed kernel^T, one tile of Q columns at a time (its
// K transposed kernel tiles resident), scattered back onto the input pixels. Samples are split over threads: two
// columns of one tile, or of two tiles, can land on the same input value (same channel, different taps).
Tensor input_grad(const Tensor& grad_out, const Tensor& a, const Tensor& bank_t, const Geometry& g) {
  Tensor grad_x = at::zeros({g.n, g.h, g.w, g.c_in}, grad_out.options());
  const float *gp = grad_out.data_ptr<float>(), *ap = a.data_ptr<float>(), *bp = bank_t.data_ptr<float>();
  float* gxp = grad_x.data_ptr<float>();
  // Q columns per tile: K transposed tiles of C_out rows resident, a multiple of 16 (whole vectors)
  int64_t width = kTileBytes / (g.k * g.c_out * 4);
  width = std::min(width, std::max<int64_t>(kPatchBytes / (g.hw * 4), 16));
  width = std::min(g.q, std::max<int64_t>(16, width / 16 * 16));
  const int64_t group = kGroup;
  const int64_t mix_rows = std::max<int64_t>(8, kMixBytes / (group * width * 4));
  at::parallel_for(0, g.n, (g.n + 2 * at::get_num_threads() - 1) / (2 * at::get_num_threads()),
                   [&](int64_t n0, int64_t n1) {
    std::vector<float> tile(g.k * g.c_out * width), kernel(group * mix_rows * width), d(group * g.hw * width);
    for (int64_t q0 = 0; q0 < g.q; q0 += width) {
      const int64_t qw = std::min(width, g.q - q0);
      pack_tile(bp + q0, g.k, g.c_out * g.q, g.q, g.c_out, qw, tile.data());
      for (int64_t n = n0; n < n1; n += group) {
        const int64_t gs = std::min(group, n1 - n);
        for (int64_t r0 = 0; r0 < g.c_out; r0 += mix_rows) {
          const int64_t rw = std::min(mix_rows, g.c_out - r0);
          mix_tile(ap + n * g.k, tile.data() + r0 * g.k * qw, g.k, gs, rw, qw, kernel.data(), mix_rows * qw);
          for (int64_t i = 0; i < gs; ++i)
            at::native::cpublas::brgemm(g.hw, qw, rw, g.c_out, qw, qw, /*add_C=*/r0 > 0,
                                        gp + (n + i) * g.hw * g.c_out + r0, kernel.data() + i * mix_rows * qw,
                                        d.data() + i * g.hw * qw);
        }
        for (int64_t i = 0; i < gs; ++i)
          scatter_patches(d.data() + i * g.hw * qw, g, q0, qw, gxp + (n + i) * g.hw * g.c_in);
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return grad_x;
}

// d loss / d bank and d loss / d a: per sample, the mixed kernel's gradient (as C_out x Q, the layout of bank_t)
// E = grad_out[n]^T @ patches, one tile (64 output channels x a range of Q) at a time, reduced at once into the K
// kernels' gradient (the tile's accumulator, resident beside the K kernel tiles) and into the sample's K
// mixing-weight gradients. grad_out_t is grad_out as (N, C_out, H*W), so that both GEMM operands are read
// row-major and the patches are gathered with row copies. Tiles are split over threads: each writes its own
// region of the gradient, and its own partial sums of grad_a.
std::vector<Tensor> kernel_grads(const Tensor& x, const Tensor& grad_out_t, const Tensor& a, const Tensor& bank_t,
                                 const Geometry& g) {
  Tensor grad_bank_t = at::empty_like(bank_t);
  const int64_t threads = at::get_num_threads();
  Tensor grad_a_parts = at::zeros({threads, g.n, g.k}, a.options());
  const float *xp = x.data_ptr<float>(), *gp = grad_out_t.data_ptr<float>(), *ap = a.data_ptr<float>(),
              *bp = bank_t.data_ptr<float>();
  float *gbp = grad_bank_t.data_ptr<float>(), *gap = grad_a_parts.data_ptr<float>();
  const int64_t o_tile = g.o_tile, group = kGroup;
  // Q columns per tile: kernel tiles and their gradient accumulators resident, the group's patches beside them
  int64_t width = kTileBytes / (2 * g.k * o_tile * 4);
  width = std::min(width, std::max<int64_t>(kPatchBytes / (group * g.hw * 4), 16));
  width = std::min(g.q, std::max<int64_t>(16, width / 16 * 16));
  const int64_t q_tiles = (g.q + width - 1) / width, o_tiles = (g.c_out + o_tile - 1) / o_tile;
  const int64_t sub_rows = o_tile;  // one GEMM per sample and tile: small GEMMs pay their call overhead
  at::parallel_for(0, q_tiles * o_tiles, 1, [&](int64_t begin, int64_t end) {
    float* grad_a = gap + at::get_thread_num() * g.n * g.k;
    std::vector<float> tile(g.k * o_tile * width), acc(g.k * o_tile * width), cols(group * g.hw * width),
        e(group * sub_rows * width);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t q0 = (unit % q_tiles) * width, o0 = (unit / q_tiles) * o_tile;
      const int64_t qw = std::min(width, g.q - q0), ow = std::min(o_tile, g.c_out - o0);
      pack_tile(bp + o0 * g.q + q0, g.k, g.c_out * g.q, g.q, ow, qw, tile.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.n; n += group) {
        const int64_t gs = std::min(group, g.n - n);
        for (int64_t i = 0; i < gs; ++i)
          gather_patches(xp + (n + i) * g.hw * g.c_in, g, q0, qw, cols.data() + i * g.hw * qw);
        for (int64_t r0 = 0; r0 < ow; r0 += sub_rows) {
          const int64_t rw = std::min(sub_rows, ow - r0);
          for (int64_t i = 0; i < gs; ++i)
            at::native::cpublas::brgemm(rw, qw, g.hw, g.hw, qw, qw, /*add_C=*/false,
                                        gp + ((n + i) * g.c_out + o0 + r0) * g.hw, cols.data() + i * g.hw * qw,
                                        e.data() + i * sub_rows * qw);
          reduce_tile(ap + n * g.k, tile.data() + r0 * g.k * qw, e.data(), sub_rows * qw, g.k, gs, rw, qw,
                      acc.data() + r0 * g.k * qw, grad_a + n * g.k);
        }
      }
      unpack_tile(acc.data(), g.k, g.c_out * g.q, g.q, ow, qw, gbp + o0 * g.q + q0);
    }
    at::native::cpublas::brgemm_release(false);
  });
  return {grad_bank_t, grad_a_parts.sum(0)};
}

// (grad_x, grad_a, grad_bank_t) for forward(x, a, bank), where bank_t is the same bank as (K, C_out, Q) and
// the gradient comes as grad_out (N, H, W, C_out) and as grad_out_t (N, C_out, H, W).
std::vector<Tensor> backward(const Tensor& x, const Tensor& a, const Tensor& bank, const Tensor& bank_t,
                             const Tensor& grad_out, const Tensor& grad_out_t) {
  for (const Tensor* t : {&x, &a, &bank, &bank_t, &grad_out, &grad_out_t}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "mixconv_fused: fp32 only");
    TORCH_CHECK(t->is_contiguous(), "mixconv_fused: contiguous inputs");
  }
  const Geometry g = geometry(x, bank, bank.size(2));
  Tensor grad_x = input_grad(grad_out, a, bank_t, g);
  std::vector<Tensor> kg = kernel_grads(x, grad_out_t, a, bank_t, g);
  return {grad_x, kg[1], kg[0]};
}

}  // namespace

// Schemas, then the CPU implementations (a plain m.def(name, fn) would register them as composite, which
// leaves no room for the shape-only implementations torch.compile needs; those come from Python).
TORCH_LIBRARY(cifarlab_mixconv, m) {
  m.def("forward(Tensor x, Tensor a, Tensor bank, int c_out) -> Tensor");
  m.def("backward(Tensor x, Tensor a, Tensor bank, Tensor bank_t, Tensor grad_out, Tensor grad_out_t) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(cifarlab_mixconv, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
