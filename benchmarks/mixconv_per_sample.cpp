// Per-sample mixed-kernel convolution on a CPU, fp32, for benchmarks/mixconv_ceiling.py --cpp: samples split
// over ATen's threads; per sample the patches are unfolded, the kernel built (the sum of K kernels) and applied
// with one GEMM, and in backward its gradient reduced into the K kernels' and the mixing weights' gradients, each
// sample's buffers staying in the thread's cache. Checked against MixConv2d.forward_reference by --check --cpp.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <vector>

using at::Tensor;

static void build_kernel(float* out, const float* a, const float* bank, int64_t K, int64_t M) {
  for (int64_t j = 0; j < M; ++j) out[j] = a[0] * bank[j];
  for (int64_t k = 1; k < K; ++k) {
    const float ak = a[k];
    const float* b = bank + k * M;
    for (int64_t j = 0; j < M; ++j) out[j] += ak * b[j];
  }
}

// grad_a[k] = <gk, bank_k>; grad_bank_k += a_k * gk, one pass over gk
template <int K>
static void reduce_grad(const float* gk, const float* a, const float* bank, float* grad_bank, float* grad_a,
                        int64_t M) {
  float acc[K] = {0};
  float ak[K];
  for (int k = 0; k < K; ++k) ak[k] = a[k];
  for (int64_t j = 0; j < M; ++j) {
    const float g = gk[j];
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
      acc[k] += g * bank[k * M + j];
      grad_bank[k * M + j] += ak[k] * g;
    }
  }
  for (int k = 0; k < K; ++k) grad_a[k] = acc[k];
}

static void reduce_grad_any(const float* gk, const float* a, const float* bank, float* grad_bank, float* grad_a,
                            int64_t K, int64_t M) {
  switch (K) {
    case 2: return reduce_grad<2>(gk, a, bank, grad_bank, grad_a, M);
    case 3: return reduce_grad<3>(gk, a, bank, grad_bank, grad_a, M);
    case 4: return reduce_grad<4>(gk, a, bank, grad_bank, grad_a, M);
    default:
      for (int64_t k = 0; k < K; ++k) {
        float acc = 0;
        for (int64_t j = 0; j < M; ++j) { acc += gk[j] * bank[k * M + j]; grad_bank[k * M + j] += a[k] * gk[j]; }
        grad_a[k] = acc;
      }
  }
}

Tensor forward(Tensor x, Tensor a, Tensor bank, int64_t c_out, int64_t kh, int64_t kw, int64_t pad, int64_t stride) {
  TORCH_CHECK(x.scalar_type() == at::kFloat, "fp32 only");
  x = x.contiguous(); a = a.contiguous(); bank = bank.contiguous();
  const int64_t n = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t ho = (H + 2 * pad - kh) / stride + 1, wo = (W + 2 * pad - kw) / stride + 1;
  const int64_t K = bank.size(0), M = bank.size(1), P = M / c_out;
  Tensor out = at::empty({n, c_out, ho * wo}, x.options());
  at::parallel_for(0, n, 1, [&](int64_t s, int64_t e) {
    at::NoGradGuard no_grad;  // grad mode is per thread; the pool threads start with it on
    Tensor kernel = at::empty({c_out, P}, x.options());
    for (int64_t i = s; i < e; ++i) {
      Tensor cols = at::im2col(x[i], {kh, kw}, {1, 1}, {pad, pad}, {stride, stride});
      build_kernel(kernel.data_ptr<float>(), a.data_ptr<float>() + i * K, bank.data_ptr<float>(), K, M);
      Tensor o = out[i];
      at::mm_out(o, kernel, cols);
    }
  });
  return out;
}

std::vector<Tensor> backward(Tensor grad_out, Tensor x, Tensor a, Tensor bank, int64_t kh, int64_t kw, int64_t pad,
                             int64_t stride) {
  x = x.contiguous(); a = a.contiguous(); bank = bank.contiguous(); grad_out = grad_out.contiguous();
  const int64_t n = x.size(0), H = x.size(2), W = x.size(3), c_out = grad_out.size(1);
  const int64_t K = bank.size(0), M = bank.size(1), P = M / c_out;
  Tensor grad_x = at::empty_like(x);
  Tensor grad_a = at::empty_like(a);
  const int64_t threads = at::get_num_threads();
  Tensor parts = at::zeros({threads, K, M}, x.options());
  at::parallel_for(0, n, 1, [&](int64_t s, int64_t e) {
    at::NoGradGuard no_grad;  // grad mode is per thread; the pool threads start with it on
    const int64_t tid = at::get_thread_num();
    Tensor kernel = at::empty({c_out, P}, x.options());
    Tensor gk = at::empty({c_out, P}, x.options());
    float* gb = parts.data_ptr<float>() + tid * K * M;
    for (int64_t i = s; i < e; ++i) {
      Tensor cols = at::im2col(x[i], {kh, kw}, {1, 1}, {pad, pad}, {stride, stride});
      build_kernel(kernel.data_ptr<float>(), a.data_ptr<float>() + i * K, bank.data_ptr<float>(), K, M);
      Tensor g = grad_out[i];
      Tensor gcols = at::mm(kernel.t(), g);
      grad_x[i].copy_(at::col2im(gcols, {H, W}, {kh, kw}, {1, 1}, {pad, pad}, {stride, stride}));
      at::mm_out(gk, g, cols.t());
      reduce_grad_any(gk.data_ptr<float>(), a.data_ptr<float>() + i * K, bank.data_ptr<float>(), gb,
                      grad_a.data_ptr<float>() + i * K, K, M);
    }
  });
  return {grad_x, grad_a, parts.sum(0)};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward);
  m.def("backward", &backward);
}
