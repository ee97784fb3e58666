// One decoder block of a decode step (one new token per row) as a single call, for int4 models on
// genloop's AVX2 kernels: RMSNorm, fused q/k/v, rotary, the slot cache's write, one-query attention,
// the output projection, RMSNorm, fused gate/up, SwiGLU's gate, down, and both residual adds.
//
// The same ops the Python block calls, in the same order, so the result is bit-identical to it; what
// goes is the ~40 Python-level calls per block (module calls, views, the cache's index_put), which
// cost a 30-block SmolLM2 step about 8 ms against ~7 ms of arithmetic at one row.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "avx2_kernels.h"

namespace genloop_avx2 {
namespace {

// n floats (a multiple of 8) to fp16, rounded to nearest even as PyTorch's conversion rounds.
void store_half(at::Half* dst, const float* src, int64_t n) {
  for (int64_t i = 0; i < n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

}  // namespace

// weights: norm1, qkv (w, scales, zeros), o (w, s, z), norm2, gate_up (w, s, z), down (w, s, z).
// x [B, 1, D]; k_cache/v_cache [slots, Hkv, L, d] fp32 or fp16 (one layer of the slot cache); rows
// are slots start..start+B-1, row b's new token goes to position past[b] and attends to 0..past[b].
// cos/sin [B, 1, 1, d].
at::Tensor decode_block(const at::Tensor& x, at::TensorList weights, double eps, int64_t heads,
                        at::Tensor& k_cache, at::Tensor& v_cache, int64_t start, const at::Tensor& past,
                        const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(weights.size() == 14, "decode_block takes 14 weight tensors, got ", weights.size());
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [B, 1, D] tensor");
  const bool half = k_cache.scalar_type() == at::kHalf;
  TORCH_CHECK(k_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() &&
                  v_cache.is_contiguous() && (half || k_cache.scalar_type() == at::kFloat) &&
                  v_cache.scalar_type() == k_cache.scalar_type(),
              "k_cache and v_cache must be contiguous float32 or float16 [slots, Hkv, L, d]");
  const int64_t B = x.size(0), D = x.size(2), Hkv = k_cache.size(1), L = k_cache.size(2), d = k_cache.size(3);
  TORCH_CHECK(past.scalar_type() == at::kLong && past.dim() == 1 && past.size(0) == B,
              "past must be int64 [B]");
  TORCH_CHECK(start >= 0 && start + B <= k_cache.size(0), "rows start..start+B must be cache slots");
  TORCH_CHECK(heads > 0 && heads % Hkv == 0 && d % 8 == 0,
              "heads must be a multiple of the cache's kv heads, and the head size of 8");
  const at::Tensor pos = past.contiguous();
  const int64_t* pp = pos.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(pp[b] >= 0 && pp[b] < L, "a row's position is outside the cache");
    total = std::max(total, pp[b] + 1);
  }
  // attention half
  const at::Tensor h = rms_norm(x, weights[0], eps);
  const at::Tensor qkv = int4_mm(h.view({B, D}), weights[1], weights[2], weights[3]);
  TORCH_CHECK(qkv.size(1) == (heads + 2 * Hkv) * d, "q/k/v width does not match heads and the cache");
  const at::Tensor parts = qkv.view({B, 1, heads + 2 * Hkv, d}).transpose(1, 2);  // [B, H+2Hkv, 1, d]
  const at::Tensor q = rotary(parts.narrow(1, 0, heads), cos, sin);
  const at::Tensor k = rotary(parts.narrow(1, heads, Hkv), cos, sin);  // [B, Hkv, 1, d], contiguous
  const float* kp = k.data_ptr<float>();
  const float* vp = qkv.data_ptr<float>() + (heads + Hkv) * d;
  const int64_t row = (heads + 2 * Hkv) * d;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < Hkv; ++j) {
      const int64_t at = (((start + b) * Hkv + j) * L + pp[b]) * d;
      if (half) {
        store_half(k_cache.data_ptr<at::Half>() + at, kp + (b * Hkv + j) * d, d);
        store_half(v_cache.data_ptr<at::Half>() + at, vp + b * row + j * d, d);
      } else {
        std::memcpy(k_cache.data_ptr<float>() + at, kp + (b * Hkv + j) * d, d * sizeof(float));
        std::memcpy(v_cache.data_ptr<float>() + at, vp + b * row + j * d, d * sizeof(float));
      }
    }
  const at::Tensor mask = at::arange(total, pos.options()).unsqueeze(0).le(pos.unsqueeze(1));  // [B, total]
  const at::Tensor keys = k_cache.narrow(0, start, B).narrow(2, 0, total);
  const at::Tensor values = v_cache.narrow(0, start, B).narrow(2, 0, total);
  const at::Tensor att = decode_attention(q, keys, values, mask, std::pow(static_cast<double>(d), -0.5));
  const at::Tensor o = int4_mm(att.view({B, heads * d}), weights[4], weights[5], weights[6]);
  const at::Tensor x1 = x + o.view({B, 1, D});

  // MLP half
  const at::Tensor h2 = rms_norm(x1, weights[7], eps);
  const at::Tensor gate_up = int4_mm(h2.view({B, D}), weights[8], weights[9], weights[10]);
  const at::Tensor down = int4_mm(silu_mul(gate_up), weights[11], weights[12], weights[13]);
  return x1 + down.view({B, 1, D});
}

}  // namespace genloop_avx2
