// Fused mix-conv for CPUs: a 3x3, stride-1, padding-1 convolution whose kernel is, per sample n, the mix
// sum_k a[n,k] W_k of K kernels, computed without ever holding a whole per-sample kernel in memory.
//
// Why: a per-sample kernel (C_out x 9 C_in) is used for only H*W multiply-adds per element, so on 8x8 and 4x4
// maps building all of them and moving them through memory costs more than the convolution itself, and the
// alternative (K ordinary convolutions) pays K times the FLOPs. Here the K kernels are cut into tiles (a range
// of input channels, all 9 taps, a range of output channels) that stay in a core's L2 cache, and every sample
// streams through a tile: its patches for those channels gathered (implicit im2col), its kernel tile mixed from
// the K resident tiles a few rows at a time, and a small GEMM (oneDNN's brgemm, via ATen) accumulates into its
// output. FLOPs: the one convolution's, plus K/(H*W) of them to mix; the same for both gradients, where the
// kernel gradient is reduced into the K kernels' and the mixing weights' gradients as it is produced.
//
// Layouts (all contiguous): x (N, H, W, C_in), i.e. channels_last; a (N, K) mixing weights; w (K, C_out, C_in,
// 3, 3), the K kernels as PyTorch keeps them (tiles are packed from it, so no re-laid copy is made per step);
// outputs and output gradients (N, H, W, C_out); the backward also takes the output gradient as (N, C_out, H, W).
// Inside a tile of channels [c0, c0 + cw), row r = tap * cw + c (tap = 3 * dy + dx). fp32 throughout.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

using at::Tensor;

namespace {

constexpr int64_t kOutTile = 64;             // output channels per tile: four AVX-512 vectors
constexpr int64_t kMixBytes = 48 << 10;      // a group's mixed kernel rows, used from L1/L2 right after mixing
constexpr int64_t kGroup = 2;                // samples mixed per pass over the resident tile (share its loads)

// A core's L2 cache (1 MiB where the system does not say), which the tiles are sized to: the resident tiles
// (K kernels, gradient sums) at 5/8 of it; a group's gathered patches, which are streamed, up to twice it, so
// that on 32x32 maps a tile still spans 16 channels (at half the L2, 7: 1.9-2.4x a plain conv there instead
// of 1.2-1.9x; benchmarks/mixconv_layer.py).
int64_t l2_bytes() {
  static const int64_t bytes = [] {
    const long v = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return v >= (128 << 10) ? static_cast<int64_t>(v) : int64_t{1} << 20;
  }();
  return bytes;
}
int64_t tile_bytes() { return l2_bytes() * 5 / 8; }
int64_t patch_bytes() { return l2_bytes() * 2; }

struct Geometry {
  int64_t n, h, w, c_in, c_out, k, hw;
};

Geometry geometry(const Tensor& x, const Tensor& w) {
  return {x.size(0), x.size(1), x.size(2), x.size(3), w.size(1), w.size(0), x.size(1) * x.size(2)};
}

// Input channels per tile: the largest count whose resident bytes (per channel) and gathered patches fit,
// a multiple of 16 where that leaves whole vectors.
int64_t channel_tile(const Geometry& g, int64_t resident_per_channel) {
  int64_t cw = std::min(tile_bytes() / resident_per_channel, patch_bytes() / (kGroup * g.hw * 9 * 4));
  if (cw >= 16) cw = cw / 16 * 16;
  return std::max<int64_t>(1, std::min(cw, g.c_in));
}

// Calls f(col, pixel) for every tap t and pixel p of the im2col matrix of a tile of cw channels (rows
// p = y * W + x, ld = 9 * cw): col = p * 9 cw + t * cw starts that pixel's run of cw channels for tap t, and
// pixel is the input pixel the run reads (y + dy - 1, x + dx - 1), or -1 outside the image (zero padding).
template <typename F>
void for_each_patch_run(const Geometry& g, int64_t cw, F&& f) {
  for (int64_t t = 0; t < 9; ++t) {
    const int64_t dy = t / 3 - 1, dx = t % 3 - 1;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t sy = y + dy;
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const int64_t sx = xx + dx;
        const bool inside = sy >= 0 && sy < g.h && sx >= 0 && sx < g.w;
        f((y * g.w + xx) * 9 * cw + t * cw, inside ? sy * g.w + sx : -1);
      }
    }
  }
}

// Sample n's im2col matrix for the tile's channels [c0, c0 + cw), one row copy per pixel and tap.
void gather_patches(const float* xn, const Geometry& g, int64_t c0, int64_t cw, float* cols) {
  for_each_patch_run(g, cw, [&](int64_t col, int64_t pixel) {
    if (pixel < 0) {
      std::memset(cols + col, 0, cw * sizeof(float));
    } else {
      std::memcpy(cols + col, xn + pixel * g.c_in + c0, cw * sizeof(float));
    }
  });
}

// grad_x[n] += an im2col-shaped gradient for the tile's channels: col2im for one tile.
void scatter_patches(const float* cols, const Geometry& g, int64_t c0, int64_t cw, float* gxn) {
  for_each_patch_run(g, cw, [&](int64_t col, int64_t pixel) {
    if (pixel < 0) return;
    const float* src = cols + col;
    float* dst = gxn + pixel * g.c_in + c0;
#pragma omp simd
    for (int64_t i = 0; i < cw; ++i) dst[i] += src[i];
  });
}

// The forward's tile, laid out (rows, K, ow): packed[t * cw + c][k][o] = w[k][o0 + o][c0 + c][t]. Read from w
// in place, rows C_out floats apart in K planes a power of two apart would map onto a few cache sets and evict
// each other long before the L2 is full; packed, the tile stays resident. Each (k, o) reads one contiguous run.
void pack_rows_by_tap(const float* w, const Geometry& g, int64_t c0, int64_t cw, int64_t o0, int64_t ow,
                      float* packed) {
  for (int64_t kk = 0; kk < g.k; ++kk)
    for (int64_t o = 0; o < ow; ++o) {
      const float* src = w + ((kk * g.c_out + o0 + o) * g.c_in + c0) * 9;
      for (int64_t c = 0; c < cw; ++c)
        for (int64_t t = 0; t < 9; ++t) packed[((t * cw + c) * g.k + kk) * ow + o] = src[c * 9 + t];
    }
}

// The gradients' tiles, laid out (ow, K, 9 cw): packed[o][k][t * cw + c] = w[k][o0 + o][c0 + c][t].
void pack_rows_by_output(const float* w, const Geometry& g, int64_t c0, int64_t cw, int64_t o0, int64_t ow,
                         float* packed) {
  for (int64_t o = 0; o < ow; ++o)
    for (int64_t kk = 0; kk < g.k; ++kk) {
      const float* src = w + ((kk * g.c_out + o0 + o) * g.c_in + c0) * 9;
      float* dst = packed + (o * g.k + kk) * 9 * cw;
      for (int64_t c = 0; c < cw; ++c)
        for (int64_t t = 0; t < 9; ++t) dst[t * cw + c] = src[c * 9 + t];
    }
}

// The inverse of pack_rows_by_output, into the gradient of w.
void unpack_rows_by_output(const float* packed, const Geometry& g, int64_t c0, int64_t cw, int64_t o0, int64_t ow,
                           float* grad_w) {
  for (int64_t o = 0; o < ow; ++o)
    for (int64_t kk = 0; kk < g.k; ++kk) {
      float* dst = grad_w + ((kk * g.c_out + o0 + o) * g.c_in + c0) * 9;
      const float* src = packed + (o * g.k + kk) * 9 * cw;
      for (int64_t c = 0; c < cw; ++c)
        for (int64_t t = 0; t < 9; ++t) dst[c * 9 + t] = src[t * cw + c];
    }
}

// Vectors of 16 floats through GCC's vector extensions: one AVX-512 register, two AVX2 ones, whatever the
// compiling machine has (the extension is built on the machine that runs it, with -march=native).
typedef float vec16 __attribute__((vector_size(64)));
inline vec16 load16(const float* p) { vec16 v; std::memcpy(&v, p, sizeof v); return v; }
inline void store16(float* p, vec16 v) { std::memcpy(p, &v, sizeof v); }

// Runs f.template operator()<K, G>() where K (kernels) and G (samples per pass, at most kGroup) have a
// specialised loop; false otherwise, and the caller takes its generic loop.
template <int K, typename F>
bool with_group(int64_t g, F&& f) {
  static_assert(kGroup == 2, "instantiate the specialised loops for every group size up to kGroup");
  switch (g) {
    case 1: f.template operator()<K, 1>(); return true;
    case 2: f.template operator()<K, 2>(); return true;
  }
  return false;
}

template <typename F>
bool with_k_and_group(int64_t k, int64_t g, F&& f) {
  switch (k) {
    case 1: return with_group<1>(g, f);
    case 2: return with_group<2>(g, f);
    case 3: return with_group<3>(g, f);
    case 4: return with_group<4>(g, f);
    case 8: return with_group<8>(g, f);
  }
  return false;
}

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

// g samples' (a: g x k) rows of their mixed kernels, sample i's at out + i * stride.
void mix_tile(const float* a, const float* packed, int64_t k, int64_t g, int64_t rows, int64_t cols, float* out,
              int64_t stride) {
  if (with_k_and_group(k, g, [&]<int K, int G>() { mix_rows_kg<K, G>(a, packed, rows, cols, out, stride); }))
    return;
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

void reduce_tile(const float* a, const float* packed, const float* e, int64_t e_stride, int64_t k, int64_t g,
                 int64_t rows, int64_t cols, float* acc, float* grad_a) {
  if (with_k_and_group(k, g, [&]<int K, int G>() {
        reduce_rows_kg<K, G>(a, packed, e, e_stride, rows, cols, acc, grad_a);
      }))
    return;
  for (int64_t i = 0; i < g; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t kk = 0; kk < k; ++kk)
        for (int64_t o = 0; o < cols; ++o) {
          const float ev = e[i * e_stride + r * cols + o];
          acc[(r * k + kk) * cols + o] += a[i * k + kk] * ev;
          grad_a[i * k + kk] += ev * packed[(r * k + kk) * cols + o];
        }
}

void check(const std::vector<const Tensor*>& tensors) {
  for (const Tensor* t : tensors) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, "mixconv_fused: fp32 only");
    TORCH_CHECK(t->is_contiguous(), "mixconv_fused: contiguous inputs");
  }
}

// Output channels split into tiles and samples into blocks, so that each thread gets whole tiles where there
// are enough of them (its resident kernel tiles then serve all its samples).
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

Tensor forward(const Tensor& x, const Tensor& a, const Tensor& w) {
  check({&x, &a, &w});
  const Geometry g = geometry(x, w);
  Tensor out = at::empty({g.n, g.h, g.w, g.c_out}, x.options());
  if (out.numel() == 0 || g.c_in == 0) return out.zero_();  // an empty batch or map: nothing to tile
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t o_tile = std::min(g.c_out, kOutTile), group = kGroup;
  const int64_t cw_max = channel_tile(g, g.k * 9 * o_tile * 4);
  const int64_t mix_rows = std::max<int64_t>(8, kMixBytes / (group * o_tile * 4));
  const Units u = split(g, (g.c_out + o_tile - 1) / o_tile);
  at::parallel_for(0, u.o_tiles * u.sample_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> cols(group * g.hw * 9 * cw_max), kernel(group * mix_rows * o_tile),
        tile(g.k * 9 * cw_max * o_tile);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t o0 = (unit / u.sample_blocks) * o_tile, ow = std::min(o_tile, g.c_out - o0);
      const int64_t n0 = (unit % u.sample_blocks) * u.block, n1 = std::min(g.n, n0 + u.block);
      for (int64_t c0 = 0; c0 < g.c_in; c0 += cw_max) {
        const int64_t cw = std::min(cw_max, g.c_in - c0), rows = 9 * cw;
        pack_rows_by_tap(wp, g, c0, cw, o0, ow, tile.data());
        for (int64_t n = n0; n < n1; n += group) {
          const int64_t gs = std::min(group, n1 - n);
          for (int64_t i = 0; i < gs; ++i)
            gather_patches(xp + (n + i) * g.hw * g.c_in, g, c0, cw, cols.data() + i * g.hw * rows);
          for (int64_t r0 = 0; r0 < rows; r0 += mix_rows) {
            const int64_t rw = std::min(mix_rows, rows - r0);
            mix_tile(ap + n * g.k, tile.data() + r0 * g.k * ow, g.k, gs, rw, ow, kernel.data(), mix_rows * ow);
            for (int64_t i = 0; i < gs; ++i)
              at::native::cpublas::brgemm(g.hw, ow, rw, rows, ow, g.c_out, /*add_C=*/c0 + r0 > 0,
                                          cols.data() + i * g.hw * rows + r0, kernel.data() + i * mix_rows * ow,
                                          op + (n + i) * g.hw * g.c_out + o0);
          }
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return out;
}

// d loss / d x: per sample, D = grad_out[n] (HW x C_out) @ mixed kernel^T, one tile (a channel range, a range
// of output channels) at a time, scattered back onto the input pixels (col2im). Samples are split over threads:
// tiles of different output channels add into the same input values.
Tensor input_grad(const Tensor& grad_out, const Tensor& a, const Tensor& w, const Geometry& g) {
  Tensor grad_x = at::zeros({g.n, g.h, g.w, g.c_in}, grad_out.options());
  const float *gp = grad_out.data_ptr<float>(), *ap = a.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* gxp = grad_x.data_ptr<float>();
  const int64_t group = kGroup;
  const int64_t cw_max = channel_tile(g, g.k * 9 * 128 * 4);  // with at least 128 output channels resident
  const int64_t cols = 9 * cw_max;
  const int64_t o_chunk = std::max<int64_t>(16, std::min(g.c_out, tile_bytes() / (g.k * cols * 4)));
  const int64_t mix_rows = std::max<int64_t>(8, kMixBytes / (group * cols * 4));
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, g.n, (g.n + 2 * threads - 1) / (2 * threads), [&](int64_t n0, int64_t n1) {
    std::vector<float> tile(g.k * o_chunk * cols), kernel(group * mix_rows * cols), d(group * g.hw * cols);
    for (int64_t c0 = 0; c0 < g.c_in; c0 += cw_max) {
      const int64_t cw = std::min(cw_max, g.c_in - c0), qw = 9 * cw;
      for (int64_t o0 = 0; o0 < g.c_out; o0 += o_chunk) {
        const int64_t oc = std::min(o_chunk, g.c_out - o0);
        pack_rows_by_output(wp, g, c0, cw, o0, oc, tile.data());
        for (int64_t n = n0; n < n1; n += group) {
          const int64_t gs = std::min(group, n1 - n);
          for (int64_t r0 = 0; r0 < oc; r0 += mix_rows) {
            const int64_t rw = std::min(mix_rows, oc - r0);
            mix_tile(ap + n * g.k, tile.data() + r0 * g.k * qw, g.k, gs, rw, qw, kernel.data(), mix_rows * qw);
            for (int64_t i = 0; i < gs; ++i)
              at::native::cpublas::brgemm(g.hw, qw, rw, g.c_out, qw, qw, /*add_C=*/r0 > 0,
                                          gp + (n + i) * g.hw * g.c_out + o0 + r0, kernel.data() + i * mix_rows * qw,
                                          d.data() + i * g.hw * qw);
          }
          for (int64_t i = 0; i < gs; ++i)
            scatter_patches(d.data() + i * g.hw * qw, g, c0, cw, gxp + (n + i) * g.hw * g.c_in);
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return grad_x;
}

// d loss / d w and d loss / d a: per sample, its mixed kernel's gradient for a tile (64 output channels x a
// channel range), E = grad_out[n]^T @ patches, reduced at once into the K kernels' gradient (the tile's
// accumulator, resident beside the K kernel tiles) and into the sample's K mixing-weight gradients.
// grad_out_t is grad_out as (N, C_out, H*W), so that both GEMM operands are read row-major and the patches are
// gathered with row copies. Tiles are split over threads: each writes its own region of the gradient, and
// its own partial sums of grad_a.
std::vector<Tensor> kernel_grads(const Tensor& x, const Tensor& grad_out_t, const Tensor& a, const Tensor& w,
                                 const Geometry& g) {
  Tensor grad_w = at::empty_like(w);
  const int64_t threads = at::get_num_threads();
  Tensor grad_a_parts = at::zeros({threads, g.n, g.k}, a.options());
  const float *xp = x.data_ptr<float>(), *gp = grad_out_t.data_ptr<float>(), *ap = a.data_ptr<float>(),
              *wp = w.data_ptr<float>();
  float *gwp = grad_w.data_ptr<float>(), *gap = grad_a_parts.data_ptr<float>();
  const int64_t o_tile = std::min(g.c_out, kOutTile), group = kGroup;
  const int64_t cw_max = channel_tile(g, 2 * g.k * o_tile * 9 * 4);  // kernel tiles and their gradient sums
  const int64_t c_tiles = (g.c_in + cw_max - 1) / cw_max, o_tiles = (g.c_out + o_tile - 1) / o_tile;
  at::parallel_for(0, c_tiles * o_tiles, 1, [&](int64_t begin, int64_t end) {
    float* grad_a = gap + at::get_thread_num() * g.n * g.k;
    const int64_t cols_max = 9 * cw_max;
    std::vector<float> tile(g.k * o_tile * cols_max), acc(g.k * o_tile * cols_max), cols(group * g.hw * cols_max),
        e(group * o_tile * cols_max);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t c0 = (unit % c_tiles) * cw_max, o0 = (unit / c_tiles) * o_tile;
      const int64_t cw = std::min(cw_max, g.c_in - c0), qw = 9 * cw, ow = std::min(o_tile, g.c_out - o0);
      pack_rows_by_output(wp, g, c0, cw, o0, ow, tile.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = 0; n < g.n; n += group) {
        const int64_t gs = std::min(group, g.n - n);
        for (int64_t i = 0; i < gs; ++i) {
          gather_patches(xp + (n + i) * g.hw * g.c_in, g, c0, cw, cols.data() + i * g.hw * qw);
          // one GEMM per sample and tile: smaller ones would pay their call overhead
          at::native::cpublas::brgemm(ow, qw, g.hw, g.hw, qw, qw, /*add_C=*/false,
                                      gp + ((n + i) * g.c_out + o0) * g.hw, cols.data() + i * g.hw * qw,
                                      e.data() + i * ow * qw);
        }
        reduce_tile(ap + n * g.k, tile.data(), e.data(), ow * qw, g.k, gs, ow, qw, acc.data(), grad_a + n * g.k);
      }
      unpack_rows_by_output(acc.data(), g, c0, cw, o0, ow, gwp);
    }
    at::native::cpublas::brgemm_release(false);
  });
  return {grad_w, grad_a_parts.sum(0)};
}

// (grad_x, grad_a, grad_w) for forward(x, a, w), given the output gradient as grad_out (N, H, W, C_out) and as
// grad_out_t (N, C_out, H, W).
std::vector<Tensor> backward(const Tensor& x, const Tensor& a, const Tensor& w, const Tensor& grad_out,
                             const Tensor& grad_out_t) {
  check({&x, &a, &w, &grad_out, &grad_out_t});
  const Geometry g = geometry(x, w);
  if (grad_out.numel() == 0 || g.c_in == 0) return {at::zeros_like(x), at::zeros_like(a), at::zeros_like(w)};
  Tensor grad_x = input_grad(grad_out, a, w, g);
  std::vector<Tensor> kg = kernel_grads(x, grad_out_t, a, w, g);
  return {grad_x, kg[1], kg[0]};
}

}  // namespace

// Schemas, then the CPU implementations (a plain m.def(name, fn) would register them as composite, which
// leaves no room for the shape-only implementations torch.compile needs; those come from Python).
TORCH_LIBRARY(cifarlab_mixconv, m) {
  m.def("forward(Tensor x, Tensor a, Tensor w) -> Tensor");
  m.def("backward(Tensor x, Tensor a, Tensor w, Tensor grad_out, Tensor grad_out_t) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(cifarlab_mixconv, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
