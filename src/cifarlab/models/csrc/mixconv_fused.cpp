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
// Inside a tile of channels [c0, c0 + cw), row r = tap * cw + c (tap = 3 * dy + dx). fp32 throughout, except in
// the bf16 variant (forward_bf16, backward_bf16; built where the compiler targets AVX512-BF16): there x and the
// output gradient come in as bf16, the K kernels and mixing weights are rounded to bf16 and mixed as pair
// products, each mixed kernel tile is rounded to bf16 as it is mixed, and the GEMMs multiply bf16 pairs into
// fp32 sums (vdpbf16ps: twice the fp32 FMA rate), so results and gradients come out in fp32 with autocast's
// rounding of the operands, nothing coarser; the kernel-gradient reduction stays in fp32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BF16__)
#include <immintrin.h>
#define CIFARLAB_MIXCONV_BF16 1
#endif

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

// Input channels per tile: the largest count whose resident bytes (per channel) and gathered patches (of
// patch_bytes_per_value each, for `gathered` samples at a time) fit, a multiple of 16 where that leaves whole
// vectors.
int64_t channel_tile(const Geometry& g, int64_t resident_per_channel, int64_t patch_bytes_per_value = 4,
                     int64_t gathered = kGroup) {
  int64_t cw = std::min(tile_bytes() / resident_per_channel,
                        patch_bytes() / (gathered * g.hw * 9 * patch_bytes_per_value));
  if (cw >= 16) cw = cw / 16 * 16;
  return std::max<int64_t>(1, std::min(cw, g.c_in));
}

// Calls f(col, pixel) for every tap t and pixel p of the im2col matrix of a tile of cw channels (rows
// p = y * W + x, ld = 9 * cw unless given): col = p * ld + t * cw starts that pixel's run of cw channels for
// tap t, and pixel is the input pixel the run reads (y + dy - 1, x + dx - 1), or -1 outside the image (zero
// padding).
template <typename F>
void for_each_patch_run(const Geometry& g, int64_t cw, F&& f, int64_t ld = 0) {
  if (ld == 0) ld = 9 * cw;
  for (int64_t t = 0; t < 9; ++t) {
    const int64_t dy = t / 3 - 1, dx = t % 3 - 1;
    for (int64_t y = 0; y < g.h; ++y) {
      const int64_t sy = y + dy;
      for (int64_t xx = 0; xx < g.w; ++xx) {
        const int64_t sx = xx + dx;
        const bool inside = sy >= 0 && sy < g.h && sx >= 0 && sx < g.w;
        f((y * g.w + xx) * ld + t * cw, inside ? sy * g.w + sx : -1);
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

// out_g[r][o] = sum_k a[g][k] * packed[r][k][o] for G samples g at once: their rows of their mixed kernels,
// columns o < cols of packed rows packed_ld long, output rows out_ld apart.
// K and G known at compile time keep each output vector in a register (no K-fold store), and G samples share
// each load of the resident tile: L2 bandwidth, not arithmetic, bounds this loop.
template <int K, int G>
void mix_rows_kg(const float* a, const float* packed, int64_t rows, int64_t cols, int64_t packed_ld, float* out,
                 int64_t out_ld, int64_t out_stride) {
  float ak[G][K];
  for (int g = 0; g < G; ++g)
    for (int kk = 0; kk < K; ++kk) ak[g][kk] = a[g * K + kk];
  const int64_t vec_cols = cols / 16 * 16;
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = packed + r * K * packed_ld;
    float* dst = out + r * out_ld;
    for (int64_t o = 0; o < vec_cols; o += 16) {
      vec16 v[K];
      for (int kk = 0; kk < K; ++kk) v[kk] = load16(src + kk * packed_ld + o);
      for (int g = 0; g < G; ++g) {
        vec16 acc = ak[g][0] * v[0];
        for (int kk = 1; kk < K; ++kk) acc += ak[g][kk] * v[kk];
        store16(dst + g * out_stride + o, acc);
      }
    }
    for (int64_t o = vec_cols; o < cols; ++o)
      for (int g = 0; g < G; ++g) {
        float acc = 0.f;
        for (int kk = 0; kk < K; ++kk) acc += ak[g][kk] * src[kk * packed_ld + o];
        dst[g * out_stride + o] = acc;
      }
  }
}

// g samples' (a: g x k) rows of their mixed kernels, sample i's at out + i * stride (see mix_rows_kg).
void mix_tile(const float* a, const float* packed, int64_t k, int64_t g, int64_t rows, int64_t cols, int64_t packed_ld,
              float* out, int64_t out_ld, int64_t stride) {
  if (with_k_and_group(k, g, [&]<int K, int G>() {
        mix_rows_kg<K, G>(a, packed, rows, cols, packed_ld, out, out_ld, stride);
      }))
    return;
  for (int64_t i = 0; i < g; ++i)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t o = 0; o < cols; ++o) {
        float acc = 0.f;
        for (int64_t kk = 0; kk < k; ++kk) acc += a[i * k + kk] * packed[(r * k + kk) * packed_ld + o];
        out[i * stride + r * out_ld + o] = acc;
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

// The forward's skeleton, for both variants: each unit (a tile of output channels, a block of samples; split())
// goes through the input channels a tile of at most cw_max at a time: pack(scratch, c0, cw, o0, ow) lays out
// the K kernels' tile, which stays resident while samples(scratch, n, gs, c0, cw, o0, ow) adds the tile's
// products for gs <= kGroup samples at a time into their outputs (the first channel tile writes them).
// make_scratch() gives each thread the buffers both use.
template <typename MakeScratch, typename Pack, typename Samples>
void forward_tiled(const Geometry& g, int64_t o_tile, int64_t cw_max, MakeScratch&& make_scratch, Pack&& pack,
                   Samples&& samples) {
  const Units u = split(g, (g.c_out + o_tile - 1) / o_tile);
  at::parallel_for(0, u.o_tiles * u.sample_blocks, 1, [&](int64_t begin, int64_t end) {
    auto scratch = make_scratch();
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t o0 = (unit / u.sample_blocks) * o_tile, ow = std::min(o_tile, g.c_out - o0);
      const int64_t n0 = (unit % u.sample_blocks) * u.block, n1 = std::min(g.n, n0 + u.block);
      for (int64_t c0 = 0; c0 < g.c_in; c0 += cw_max) {
        const int64_t cw = std::min(cw_max, g.c_in - c0);
        pack(scratch, c0, cw, o0, ow);
        for (int64_t n = n0; n < n1; n += kGroup) samples(scratch, n, std::min(kGroup, n1 - n), c0, cw, o0, ow);
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
}

Tensor forward(const Tensor& x, const Tensor& a, const Tensor& w) {
  check({&x, &a, &w});
  const Geometry g = geometry(x, w);
  Tensor out = at::empty({g.n, g.h, g.w, g.c_out}, x.options());
  if (out.numel() == 0 || g.c_in == 0) return out.zero_();  // an empty batch or map: nothing to tile
  const float *xp = x.data_ptr<float>(), *ap = a.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t o_tile = std::min(g.c_out, kOutTile);
  const int64_t cw_max = channel_tile(g, g.k * 9 * o_tile * 4);
  const int64_t mix_rows = std::max<int64_t>(8, kMixBytes / (kGroup * o_tile * 4));
  struct Scratch {
    std::vector<float> cols, kernel, tile;
  };
  forward_tiled(g, o_tile, cw_max,
      [&] {
        return Scratch{std::vector<float>(kGroup * g.hw * 9 * cw_max), std::vector<float>(kGroup * mix_rows * o_tile),
                       std::vector<float>(g.k * 9 * cw_max * o_tile)};
      },
      [&](Scratch& s, int64_t c0, int64_t cw, int64_t o0, int64_t ow) {
        pack_rows_by_tap(wp, g, c0, cw, o0, ow, s.tile.data());
      },
      [&](Scratch& s, int64_t n, int64_t gs, int64_t c0, int64_t cw, int64_t o0, int64_t ow) {
        const int64_t rows = 9 * cw;
        for (int64_t i = 0; i < gs; ++i)
          gather_patches(xp + (n + i) * g.hw * g.c_in, g, c0, cw, s.cols.data() + i * g.hw * rows);
        for (int64_t r0 = 0; r0 < rows; r0 += mix_rows) {  // a few rows at a time, used from L1/L2 right away
          const int64_t rw = std::min(mix_rows, rows - r0);
          mix_tile(ap + n * g.k, s.tile.data() + r0 * g.k * ow, g.k, gs, rw, ow, ow, s.kernel.data(), ow,
                   mix_rows * ow);
          for (int64_t i = 0; i < gs; ++i)
            at::native::cpublas::brgemm(g.hw, ow, rw, rows, ow, g.c_out, /*add_C=*/c0 + r0 > 0,
                                        s.cols.data() + i * g.hw * rows + r0, s.kernel.data() + i * mix_rows * ow,
                                        op + (n + i) * g.hw * g.c_out + o0);
        }
      });
  return out;
}

// d loss / d x, for both variants: per sample, D = grad_out[n] (HW x C_out) @ mixed kernel^T, one tile (a
// channel range, a chunk of output channels) at a time, scattered back onto the input pixels (col2im). The
// mixed kernel is built kColumns patch columns at a time over the whole chunk, so that each GEMM reduces over
// all of the chunk's channels and writes its block of D once (built a few output channels at a time, D was
// re-read and re-written for every few channels). Samples are split over threads: tiles of different output
// channels add into the same input values. The tile holds `planes` words per output channel and patch column
// (fp32: K kernels; bf16: K/2 pairs), packed by pack(); chunks are multiples of `rows_per_word` channels
// (bf16: pairs); block(n, gs, o0, oc, qb, qw, tile, kernel, kernel_stride, d) mixes gs samples' kernels for
// qb patch columns (tile and d already offset to the block) and writes their blocks of D.
constexpr int64_t kColumns = 64;

template <typename Word, typename Block>
Tensor input_grad_tiled(const Tensor& w, const Geometry& g, const at::TensorOptions& options, int64_t planes,
                        int64_t rows_per_word,
                        void (*pack)(const float*, const Geometry&, int64_t, int64_t, int64_t, int64_t, Word*),
                        Block&& block) {
  Tensor grad_x = at::zeros({g.n, g.h, g.w, g.c_in}, options);
  const float* wp = w.data_ptr<float>();
  float* gxp = grad_x.data_ptr<float>();
  const int64_t group = kGroup;
  const int64_t cw_max = channel_tile(g, planes * 9 * 128 * 4);  // with at least 128 output channels resident
  const int64_t qw_max = 9 * cw_max;
  const int64_t o_chunk = std::max<int64_t>(16, std::min(g.c_out, tile_bytes() / (planes * qw_max * 4))) /
                          rows_per_word * rows_per_word;
  const int64_t kernel_stride = (o_chunk / rows_per_word) * kColumns;
  const int64_t threads = at::get_num_threads();
  at::parallel_for(0, g.n, (g.n + 2 * threads - 1) / (2 * threads), [&](int64_t n0, int64_t n1) {
    std::vector<float> d(group * g.hw * qw_max);
    std::vector<Word> tile(planes * o_chunk * qw_max), kernel(group * kernel_stride);
    for (int64_t c0 = 0; c0 < g.c_in; c0 += cw_max) {
      const int64_t cw = std::min(cw_max, g.c_in - c0), qw = 9 * cw;
      for (int64_t o0 = 0; o0 < g.c_out; o0 += o_chunk) {
        const int64_t oc = std::min(o_chunk, g.c_out - o0);
        pack(wp, g, c0, cw, o0, oc, tile.data());
        for (int64_t n = n0; n < n1; n += group) {
          const int64_t gs = std::min(group, n1 - n);
          for (int64_t q0 = 0; q0 < qw; q0 += kColumns)
            block(n, gs, o0, oc, std::min(kColumns, qw - q0), qw, tile.data() + q0, kernel.data(), kernel_stride,
                  d.data() + q0);
          for (int64_t i = 0; i < gs; ++i)
            scatter_patches(d.data() + i * g.hw * qw, g, c0, cw, gxp + (n + i) * g.hw * g.c_in);
        }
      }
    }
    at::native::cpublas::brgemm_release(false);
  });
  return grad_x;
}

Tensor input_grad(const Tensor& grad_out, const Tensor& a, const Tensor& w, const Geometry& g) {
  const float *gp = grad_out.data_ptr<float>(), *ap = a.data_ptr<float>();
  return input_grad_tiled<float>(w, g, grad_out.options(), g.k, 1, pack_rows_by_output,
      [&](int64_t n, int64_t gs, int64_t o0, int64_t oc, int64_t qb, int64_t qw, const float* tile, float* kernel,
          int64_t kernel_stride, float* d) {
        mix_tile(ap + n * g.k, tile, g.k, gs, oc, qb, qw, kernel, kColumns, kernel_stride);
        for (int64_t i = 0; i < gs; ++i)
          at::native::cpublas::brgemm(g.hw, qb, oc, g.c_out, kColumns, qw, /*add_C=*/false,
                                      gp + (n + i) * g.hw * g.c_out + o0, kernel + i * kernel_stride,
                                      d + i * g.hw * qw);
      });
}

// d loss / d w and d loss / d a, for both variants: per sample, its mixed kernel's gradient for a tile (64
// output channels x a channel range), E = grad_out[n]^T @ patches (from sample_e), reduced at once into the K
// kernels' gradient (the tile's accumulator, resident beside the K kernel tiles) and into the sample's K
// mixing-weight gradients. Work units are (channel tile, output tile, block of samples): samples are split
// into blocks only where there are fewer tiles than two per thread (a 32->32 layer has one tile: one core
// did all of its kernel gradient), and each block sums into its own copy of grad_w, added up at the end.
// Every thread keeps its own partial sums of grad_a. sample_e(n, c0, cw, o0, ow, scratch, e) writes sample n's
// E (ow x 9 cw) to e, using scratch_per_sample values of scratch.
template <typename Scratch, typename SampleE>
std::vector<Tensor> kernel_grads_tiled(const Tensor& a, const Tensor& w, const Geometry& g, int64_t cw_max,
                                       int64_t scratch_per_sample, SampleE&& sample_e) {
  const int64_t threads = at::get_num_threads();
  const int64_t o_tile = std::min(g.c_out, kOutTile), group = kGroup;
  const int64_t c_tiles = (g.c_in + cw_max - 1) / cw_max, o_tiles = (g.c_out + o_tile - 1) / o_tile;
  const int64_t tiles = c_tiles * o_tiles;
  const int64_t blocks_wanted = std::min(g.n, (2 * threads + tiles - 1) / tiles);
  const int64_t block = (g.n + blocks_wanted - 1) / blocks_wanted;
  const int64_t s_blocks = (g.n + block - 1) / block;
  Tensor grad_w_parts = at::empty({s_blocks, w.numel()}, w.options());
  Tensor grad_a_parts = at::zeros({threads, g.n, g.k}, a.options());
  const float *ap = a.data_ptr<float>(), *wp = w.data_ptr<float>();
  float *gwp = grad_w_parts.data_ptr<float>(), *gap = grad_a_parts.data_ptr<float>();
  at::parallel_for(0, tiles * s_blocks, 1, [&](int64_t begin, int64_t end) {
    float* grad_a = gap + at::get_thread_num() * g.n * g.k;
    const int64_t cols_max = 9 * cw_max;
    std::vector<float> tile(g.k * o_tile * cols_max), acc(g.k * o_tile * cols_max), e(group * o_tile * cols_max);
    std::vector<Scratch> scratch(group * scratch_per_sample);
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t s = unit % s_blocks, t = unit / s_blocks;
      const int64_t c0 = (t % c_tiles) * cw_max, o0 = (t / c_tiles) * o_tile;
      const int64_t cw = std::min(cw_max, g.c_in - c0), qw = 9 * cw, ow = std::min(o_tile, g.c_out - o0);
      const int64_t n0 = s * block, n1 = std::min(g.n, n0 + block);
      pack_rows_by_output(wp, g, c0, cw, o0, ow, tile.data());
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t n = n0; n < n1; n += group) {
        const int64_t gs = std::min(group, n1 - n);
        for (int64_t i = 0; i < gs; ++i)
          sample_e(n + i, c0, cw, o0, ow, scratch.data() + i * scratch_per_sample, e.data() + i * ow * qw);
        reduce_tile(ap + n * g.k, tile.data(), e.data(), ow * qw, g.k, gs, ow, qw, acc.data(), grad_a + n * g.k);
      }
      unpack_rows_by_output(acc.data(), g, c0, cw, o0, ow, gwp + s * w.numel());
    }
    at::native::cpublas::brgemm_release(false);
  });
  Tensor grad_w = (s_blocks == 1 ? grad_w_parts[0] : grad_w_parts.sum(0)).view(w.sizes());
  return {grad_w, grad_a_parts.sum(0)};
}

// The fp32 kernel gradient. grad_out_t is grad_out as (N, C_out, H*W), so that both GEMM operands are read
// row-major and the patches are gathered with row copies; one GEMM per sample and tile (smaller ones would
// pay their call overhead).
std::vector<Tensor> kernel_grads(const Tensor& x, const Tensor& grad_out_t, const Tensor& a, const Tensor& w,
                                 const Geometry& g) {
  const float *xp = x.data_ptr<float>(), *gp = grad_out_t.data_ptr<float>();
  const int64_t o_tile = std::min(g.c_out, kOutTile);
  const int64_t cw_max = channel_tile(g, 2 * g.k * o_tile * 9 * 4);  // kernel tiles and their gradient sums
  return kernel_grads_tiled<float>(a, w, g, cw_max, g.hw * 9 * cw_max,
      [&](int64_t n, int64_t c0, int64_t cw, int64_t o0, int64_t ow, float* cols, float* e) {
        const int64_t qw = 9 * cw;
        gather_patches(xp + n * g.hw * g.c_in, g, c0, cw, cols);
        at::native::cpublas::brgemm(ow, qw, g.hw, g.hw, qw, qw, /*add_C=*/false, gp + (n * g.c_out + o0) * g.hw, cols,
                                    e);
      });
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

// ---------------------------------------------------------------------------------------------------------------
// The bf16 variant. vdpbf16ps multiplies pairs of bf16 values along the reduction dimension into fp32 sums, so
// the GEMM operands are laid out in pairs: A row-major with the two values of a pair adjacent (one 32-bit word),
// B "VNNI": word [p][j] holds B[2p][j] in its low half and B[2p + 1][j] in its high half. Reduction lengths are
// padded to even with zeros; a layer needs an even C_out and an even H*W (bf16_supports in Python checks it).

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// fp32 -> bf16 bits, rounded to nearest even as torch rounds (NaN payloads aside: none reaches a kernel tile)
inline uint32_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
inline uint32_t bf16_pair(float lo, float hi) { return bf16_bits(lo) | (bf16_bits(hi) << 16); }

typedef uint32_t uvec16 __attribute__((vector_size(64)));
// Two rows of 16 floats as 16 pair words, lo's values in the low halves.
inline uvec16 bf16_pairs(vec16 lo, vec16 hi) {
  uvec16 l, h;
  std::memcpy(&l, &lo, sizeof l);
  std::memcpy(&h, &hi, sizeof h);
  l = (l + 0x7fffu + ((l >> 16) & 1u)) >> 16;
  h = (h + 0x7fffu + ((h >> 16) & 1u)) & 0xffff0000u;
  return l | h;
}

// Sample n's im2col matrix in bf16 for the tile's channels, rows ld values apart (ld even; the value past the
// 9 cw taps, if any, zero so that the pair it ends is exact).
void gather_patches_bf16(const uint16_t* xn, const Geometry& g, int64_t c0, int64_t cw, int64_t ld, uint16_t* cols) {
  for_each_patch_run(g, cw, [&](int64_t col, int64_t pixel) {
    if (pixel < 0) {
      std::memset(cols + col, 0, cw * sizeof(uint16_t));
    } else if (cw < 16) {  // a first layer's 3 channels: with a memcpy call per run its forward took 1.1x as long
      for (int64_t c = 0; c < cw; ++c) cols[col + c] = xn[pixel * g.c_in + c0 + c];
    } else {
      std::memcpy(cols + col, xn + pixel * g.c_in + c0, cw * sizeof(uint16_t));
    }
  }, ld);
  if (ld > 9 * cw)
    for (int64_t p = 0; p < g.hw; ++p) cols[p * ld + 9 * cw] = 0;
}

// The kernel gradient's B operand: sample n's im2col matrix (pixels x 9 cw) in pairs of pixels,
// out[j][t * cw + c] = (its value at pixel 2j, at pixel 2j + 1), rows ld words apart.
void gather_patch_pairs(const uint16_t* xn, const Geometry& g, int64_t c0, int64_t cw, int64_t ld, uint32_t* out) {
  auto source = [&](int64_t p, int64_t t) -> const uint16_t* {
    const int64_t sy = p / g.w + t / 3 - 1, sx = p % g.w + t % 3 - 1;
    return sy >= 0 && sy < g.h && sx >= 0 && sx < g.w ? xn + (sy * g.w + sx) * g.c_in + c0 : nullptr;
  };
  for (int64_t j = 0; j < g.hw / 2; ++j)
    for (int64_t t = 0; t < 9; ++t) {
      const uint16_t *s0 = source(2 * j, t), *s1 = source(2 * j + 1, t);
      uint32_t* dst = out + j * ld + t * cw;
      if (s0 && s1) {
        for (int64_t c = 0; c < cw; ++c) dst[c] = s0[c] | (uint32_t{s1[c]} << 16);
      } else if (s0) {
        for (int64_t c = 0; c < cw; ++c) dst[c] = s0[c];
      } else if (s1) {
        for (int64_t c = 0; c < cw; ++c) dst[c] = uint32_t{s1[c]} << 16;
      } else {
        std::memset(dst, 0, cw * sizeof(uint32_t));
      }
    }
}

inline uint32_t load_word(const uint16_t* p) {  // a pair of bf16 values, read without breaking aliasing rules
  uint32_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// The bf16 variant's kernel tiles, in pairs of kernels (K rounded up to even with a zero kernel), so that the
// mixing is itself a pair product: each word holds (W_2kp, W_2kp+1) at one position. ByTap (the forward's
// GEMM operand rows): packed[(t * cw + c) * kpairs + kp][o]; else by output channel (the input gradient's):
// packed[o * kpairs + kp][t * cw + c]; for w[., o0 + o, c0 + c, t].
template <bool ByTap>
void pack_pairs(const float* w, const Geometry& g, int64_t c0, int64_t cw, int64_t o0, int64_t ow, uint32_t* packed) {
  const int64_t kpairs = (g.k + 1) / 2;
  for (int64_t kp = 0; kp < kpairs; ++kp)
    for (int64_t o = 0; o < ow; ++o) {
      const float* lo = w + ((2 * kp * g.c_out + o0 + o) * g.c_in + c0) * 9;
      const float* hi = 2 * kp + 1 < g.k ? lo + g.c_out * g.c_in * 9 : nullptr;
      for (int64_t c = 0; c < cw; ++c)
        for (int64_t t = 0; t < 9; ++t) {
          const int64_t at = ByTap ? ((t * cw + c) * kpairs + kp) * ow + o : (o * kpairs + kp) * 9 * cw + t * cw + c;
          packed[at] = bf16_pair(lo[c * 9 + t], hi ? hi[c * 9 + t] : 0.f);
        }
    }
}

#ifdef CIFARLAB_MIXCONV_BF16
// For G samples: out_g[r / 2][o] = the bf16 pair (row r, row r + 1) of sample g's mixed kernel, each row
// sum_kp (a_2kp, a_2kp+1) . packed[r][kp][o] in pair products with fp32 sums, rounded once (a and the K
// kernels in bf16, as autocast's library forms take them; the mixing runs at the pair-product rate and
// streams half the bytes of fp32 tiles). rows even; columns o < cols of packed rows packed_ld words long;
// output rows out_ld words apart, samples out_stride apart.
template <int G>
void mix_pairs_g(const float* a, int64_t k, const uint32_t* packed, int64_t rows, int64_t cols, int64_t packed_ld,
                 uint32_t* out, int64_t out_ld, int64_t out_stride) {
  const int64_t kpairs = (k + 1) / 2;
  std::vector<__m512bh> ab(G * kpairs);
  for (int g = 0; g < G; ++g)
    for (int64_t kp = 0; kp < kpairs; ++kp)
      ab[g * kpairs + kp] = (__m512bh)_mm512_set1_epi32(static_cast<int>(
          bf16_pair(a[g * k + 2 * kp], 2 * kp + 1 < k ? a[g * k + 2 * kp + 1] : 0.f)));
  for (int64_t r = 0; r < rows; r += 2) {
    const uint32_t* s0 = packed + r * kpairs * packed_ld;
    const uint32_t* s1 = s0 + kpairs * packed_ld;
    uint32_t* dst = out + (r / 2) * out_ld;
    for (int64_t o = 0; o < cols; o += 16) {
      const __mmask16 m = cols - o >= 16 ? static_cast<__mmask16>(0xffff)
                                         : static_cast<__mmask16>((1u << (cols - o)) - 1);
      __m512 acc[G][2];
      for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = _mm512_setzero_ps();
      for (int64_t kp = 0; kp < kpairs; ++kp) {
        const __m512bh v0 = (__m512bh)_mm512_maskz_loadu_epi32(m, s0 + kp * packed_ld + o);
        const __m512bh v1 = (__m512bh)_mm512_maskz_loadu_epi32(m, s1 + kp * packed_ld + o);
        for (int g = 0; g < G; ++g) {
          acc[g][0] = _mm512_dpbf16_ps(acc[g][0], ab[g * kpairs + kp], v0);
          acc[g][1] = _mm512_dpbf16_ps(acc[g][1], ab[g * kpairs + kp], v1);
        }
      }
      for (int g = 0; g < G; ++g) {
        const uvec16 words = bf16_pairs((vec16)acc[g][0], (vec16)acc[g][1]);
        _mm512_mask_storeu_epi32(dst + g * out_stride + o, m, (__m512i)words);
      }
    }
  }
}

void mix_pairs_tile(const float* a, int64_t k, int64_t g, const uint32_t* packed, int64_t rows, int64_t cols,
                    int64_t packed_ld, uint32_t* out, int64_t out_ld, int64_t stride) {
  static_assert(kGroup == 2, "instantiate mix_pairs_g for every group size up to kGroup");
  if (g == 2) {
    mix_pairs_g<2>(a, k, packed, rows, cols, packed_ld, out, out_ld, stride);
  } else {
    mix_pairs_g<1>(a, k, packed, rows, cols, packed_ld, out, out_ld, stride);
  }
}

// C[MR rows][NV*16 columns, the last vector masked by `tail`] (+)= A (MR rows of kp pair words, lda values
// apart) . B (kp rows of pair words, ldb words apart). Every B vector is loaded once for MR rows, every A pair
// broadcast once for NV vectors: MR*NV accumulators stay in registers (6 x 4 = 24 of 32).
template <int MR, int NV>
void dot_block(const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb, int64_t kp, float* C, int64_t ldc,
               bool add, __mmask16 tail) {
  __m512 acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = add ? _mm512_maskz_loadu_ps(v == NV - 1 ? tail : 0xffff, C + r * ldc + 16 * v) : _mm512_setzero_ps();
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh b[NV];
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + p * ldb + 16 * v);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(load_word(A + r * lda + 2 * p)));
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], av, b[v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(C + r * ldc + 16 * v, v == NV - 1 ? tail : 0xffff, acc[r][v]);
}

template <int MR>
void dot_rows(int64_t nv, const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb, int64_t kp, float* C,
              int64_t ldc, bool add, __mmask16 tail) {
  switch (nv) {
    case 1: dot_block<MR, 1>(A, lda, B, ldb, kp, C, ldc, add, tail); break;
    case 2: dot_block<MR, 2>(A, lda, B, ldb, kp, C, ldc, add, tail); break;
    case 3: dot_block<MR, 3>(A, lda, B, ldb, kp, C, ldc, add, tail); break;
    default: dot_block<MR, 4>(A, lda, B, ldb, kp, C, ldc, add, tail); break;
  }
}

// C (m x n, fp32, ldc) = or += A (m x 2kp bf16, lda values a row, even) @ B (kp x n pair words, ldb >= n rounded
// up to 16). Columns in blocks of 64, so that a block of B stays in L1 while all rows of A stream past it.
void gemm_bf16(int64_t m, int64_t n, int64_t kp, const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb,
               float* C, int64_t ldc, bool add) {
  constexpr int64_t kRows = 6;
  for (int64_t j = 0; j < n; j += 64) {
    const int64_t nw = std::min<int64_t>(64, n - j), nv = (nw + 15) / 16;
    const __mmask16 tail = nw % 16 ? static_cast<__mmask16>((1u << (nw % 16)) - 1) : static_cast<__mmask16>(0xffff);
    int64_t i = 0;
    for (; i + kRows <= m; i += kRows)
      dot_rows<kRows>(nv, A + i * lda, lda, B + j, ldb, kp, C + i * ldc + j, ldc, add, tail);
    const uint16_t* a_rest = A + i * lda;
    float* c_rest = C + i * ldc + j;
    switch (m - i) {
      case 1: dot_rows<1>(nv, a_rest, lda, B + j, ldb, kp, c_rest, ldc, add, tail); break;
      case 2: dot_rows<2>(nv, a_rest, lda, B + j, ldb, kp, c_rest, ldc, add, tail); break;
      case 3: dot_rows<3>(nv, a_rest, lda, B + j, ldb, kp, c_rest, ldc, add, tail); break;
      case 4: dot_rows<4>(nv, a_rest, lda, B + j, ldb, kp, c_rest, ldc, add, tail); break;
      case 5: dot_rows<5>(nv, a_rest, lda, B + j, ldb, kp, c_rest, ldc, add, tail); break;
    }
  }
}
#else  // never reached: the bf16 ops check has_bf16() first
void mix_pairs_tile(const float*, int64_t, int64_t, const uint32_t*, int64_t, int64_t, int64_t, uint32_t*, int64_t,
                    int64_t) {
  TORCH_CHECK(false, "mixconv_fused: built without AVX512-BF16 (this CPU or compiler lacks it)");
}
void gemm_bf16(int64_t, int64_t, int64_t, const uint16_t*, int64_t, const uint32_t*, int64_t, float*, int64_t, bool) {
  TORCH_CHECK(false, "mixconv_fused: built without AVX512-BF16 (this CPU or compiler lacks it)");
}
#endif

bool has_bf16() {
#ifdef CIFARLAB_MIXCONV_BF16
  return true;
#else
  return false;
#endif
}

void check_bf16(const Tensor& x, const Tensor& a, const Tensor& w, const Tensor* grad_out = nullptr,
                const Tensor* grad_out_t = nullptr) {
  TORCH_CHECK(has_bf16(), "mixconv_fused: built without AVX512-BF16 (this CPU or compiler lacks it)");
  check({&a, &w});
  for (const Tensor* t : {&x, grad_out, grad_out_t}) {
    if (t == nullptr) continue;
    TORCH_CHECK(t->scalar_type() == at::kBFloat16, "mixconv_fused: bf16 activations and gradients");
    TORCH_CHECK(t->is_contiguous(), "mixconv_fused: contiguous inputs");
  }
  TORCH_CHECK(w.size(1) % 2 == 0 && (x.size(1) * x.size(2)) % 2 == 0,
              "mixconv_fused: the bf16 kernel needs an even C_out and an even H*W");
}

const uint16_t* bf16_data(const Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

// forward() with bf16 patches and mixed kernels (see the top of the file); out in fp32. Each sample's kernel
// tile is mixed whole (not a few rows at a time as in fp32), so every GEMM reduces over the tile's channels
// and its output block is read and written once per tile (forward 1.1x on 16x16 maps, the same elsewhere).
Tensor forward_bf16(const Tensor& x, const Tensor& a, const Tensor& w) {
  check_bf16(x, a, w);
  const Geometry g = geometry(x, w);
  Tensor out = at::empty({g.n, g.h, g.w, g.c_out}, a.options());
  if (out.numel() == 0 || g.c_in == 0) return out.zero_();
  const uint16_t* xp = bf16_data(x);
  const float *ap = a.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t o_tile = std::min(g.c_out, kOutTile), owp = round_up(o_tile, 16);
  const int64_t kpairs = (g.k + 1) / 2;
  const int64_t cw_max = channel_tile(g, kpairs * 9 * o_tile * 4, 2, /*gathered=*/1);
  const int64_t ld_max = round_up(9 * cw_max, 2);
  const int64_t kernel_stride = (ld_max / 2) * owp;
  struct Scratch {
    std::vector<uint16_t> cols;  // one sample's patches, used right after they are gathered
    std::vector<uint32_t> kernel, tile;
  };
  forward_tiled(g, o_tile, cw_max,
      [&] {
        return Scratch{std::vector<uint16_t>(g.hw * ld_max), std::vector<uint32_t>(kGroup * kernel_stride),
                       std::vector<uint32_t>(kpairs * ld_max * o_tile)};
      },
      [&](Scratch& s, int64_t c0, int64_t cw, int64_t o0, int64_t ow) {
        const int64_t rows = 9 * cw, ld = round_up(rows, 2);
        pack_pairs<true>(wp, g, c0, cw, o0, ow, s.tile.data());
        std::fill(s.tile.begin() + rows * kpairs * ow, s.tile.begin() + ld * kpairs * ow, 0u);  // the pad row
      },
      [&](Scratch& s, int64_t n, int64_t gs, int64_t c0, int64_t cw, int64_t o0, int64_t ow) {
        const int64_t ld = round_up(9 * cw, 2);
        mix_pairs_tile(ap + n * g.k, g.k, gs, s.tile.data(), ld, ow, ow, s.kernel.data(), owp, kernel_stride);
        for (int64_t i = 0; i < gs; ++i) {
          gather_patches_bf16(xp + (n + i) * g.hw * g.c_in, g, c0, cw, ld, s.cols.data());
          gemm_bf16(g.hw, ow, ld / 2, s.cols.data(), ld, s.kernel.data() + i * kernel_stride, owp,
                    op + (n + i) * g.hw * g.c_out + o0, g.c_out, /*add=*/c0 > 0);
        }
      });
  return out;
}

// input_grad() with bf16 output gradients and mixed kernels (pairs of output channels); grad_x in fp32.
Tensor input_grad_bf16(const Tensor& grad_out, const Tensor& a, const Tensor& w, const Geometry& g) {
  const uint16_t* gp = bf16_data(grad_out);
  const float* ap = a.data_ptr<float>();
  return input_grad_tiled<uint32_t>(w, g, a.options(), (g.k + 1) / 2, 2, pack_pairs<false>,
      [&](int64_t n, int64_t gs, int64_t o0, int64_t oc, int64_t qb, int64_t qw, const uint32_t* tile,
          uint32_t* kernel, int64_t kernel_stride, float* d) {
        mix_pairs_tile(ap + n * g.k, g.k, gs, tile, oc, qb, qw, kernel, kColumns, kernel_stride);
        for (int64_t i = 0; i < gs; ++i)
          gemm_bf16(g.hw, qb, oc / 2, gp + (n + i) * g.hw * g.c_out + o0, g.c_out, kernel + i * kernel_stride,
                    kColumns, d + i * g.hw * qw, qw, /*add=*/false);
      });
}

// kernel_grads() with bf16 operands: E = grad_out[n]^T @ patches multiplies pairs of pixels.
std::vector<Tensor> kernel_grads_bf16(const Tensor& x, const Tensor& grad_out_t, const Tensor& a, const Tensor& w,
                                      const Geometry& g) {
  const uint16_t *xp = bf16_data(x), *gp = bf16_data(grad_out_t);
  const int64_t o_tile = std::min(g.c_out, kOutTile);
  const int64_t cw_max = channel_tile(g, 2 * g.k * o_tile * 9 * 4, 2);
  return kernel_grads_tiled<uint32_t>(a, w, g, cw_max, (g.hw / 2) * round_up(9 * cw_max, 16),
      [&](int64_t n, int64_t c0, int64_t cw, int64_t o0, int64_t ow, uint32_t* cols, float* e) {
        const int64_t qw = 9 * cw, qwp = round_up(qw, 16);
        gather_patch_pairs(xp + n * g.hw * g.c_in, g, c0, cw, qwp, cols);
        gemm_bf16(ow, qw, g.hw / 2, gp + (n * g.c_out + o0) * g.hw, g.hw, cols, qwp, e, qw, /*add=*/false);
      });
}

// backward() for forward_bf16: x, grad_out (N, H, W, C_out) and grad_out_t (N, C_out, H, W) in bf16.
std::vector<Tensor> backward_bf16(const Tensor& x, const Tensor& a, const Tensor& w, const Tensor& grad_out,
                                  const Tensor& grad_out_t) {
  check_bf16(x, a, w, &grad_out, &grad_out_t);
  const Geometry g = geometry(x, w);
  if (grad_out.numel() == 0 || g.c_in == 0)
    return {at::zeros_like(x, a.options()), at::zeros_like(a), at::zeros_like(w)};
  Tensor grad_x = input_grad_bf16(grad_out, a, w, g);
  std::vector<Tensor> kg = kernel_grads_bf16(x, grad_out_t, a, w, g);
  return {grad_x, kg[1], kg[0]};
}

}  // namespace

// Schemas, then the CPU implementations (a plain m.def(name, fn) would register them as composite, which
// leaves no room for the shape-only implementations torch.compile needs; those come from Python).
TORCH_LIBRARY(cifarlab_mixconv, m) {
  m.def("forward(Tensor x, Tensor a, Tensor w) -> Tensor");
  m.def("backward(Tensor x, Tensor a, Tensor w, Tensor grad_out, Tensor grad_out_t) -> Tensor[]");
  m.def("forward_bf16(Tensor x, Tensor a, Tensor w) -> Tensor");
  m.def("backward_bf16(Tensor x, Tensor a, Tensor w, Tensor grad_out, Tensor grad_out_t) -> Tensor[]");
  m.def("has_bf16() -> bool", &has_bf16);
}

TORCH_LIBRARY_IMPL(cifarlab_mixconv, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
  m.impl("forward_bf16", &forward_bf16);
  m.impl("backward_bf16", &backward_bf16);
}
