// genloop's AVX2 matmul kernels: int4 or int8 weights times int8 activations, fp32 out.
//
// Activations are quantized per row and per block of 32 along K (absmax / 127, like llama.cpp's
// Q8_0), so a row's result never depends on the other rows of its batch. The weights are laid out
// in blocks of 8 output columns: one 32-bit lane of a register holds 4 consecutive K of one column,
// so `vpmaddubsw` against 4 activation bytes broadcast to all lanes leaves each column's partial dot
// product in its own lane, and a block of 32 K ends in one register of 8 column sums: no horizontal
// additions, one int->float conversion and one multiply-add per 8 columns and block.
//
// int4: w = (q - 8) * scale + zero per group of 32 along K, q in 0..15 (unsigned, the first operand
// of vpmaddubsw). With x ~ step * c (c int8) a group contributes
//   step * (scale * sum(q * c) + (zero - 8 * scale) * sum(c)),
// and sum(q * c) fits int16 over a block: 8 pairs of 2 * 15 * 127 = 30480 < 32767.
// int8: w = q * scale per column; |q| goes in the unsigned operand and q's sign onto c, and each
// pair sum (<= 2 * 127 * 127) is widened to int32 at once.
//
// RMSNorm, rotary, one-query attention and SwiGLU's gate are a step's other per-layer work: as
// PyTorch expressions 6, 7, 1 and 3 calls (the gate on a strided half), as ops here one call each.

#include "avx2_kernels.h"

#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;   // K per activation block and int4 group
constexpr int64_t kCols = 8;     // output columns per weight block
constexpr int64_t kRows = 4;     // activation rows per register tile
constexpr int64_t kColBlocks = 4;  // weight blocks kept hot in L1 while the row tiles pass

struct Codes {
  at::Tensor q;     // int8 [M, K]
  at::Tensor step;  // [M, K / 32]
  at::Tensor csum;  // step * sum of the block's codes, [M, K / 32]
};

Codes quantize_rows(const at::Tensor& x) {
  const int64_t M = x.size(0), K = x.size(1), G = K / kBlock;
  Codes out{at::empty({M, K}, x.options().dtype(at::kChar)), at::empty({M, G}, x.options()),
            at::empty({M, G}, x.options())};
  const float* xp = x.data_ptr<float>();
  int8_t* qp = out.q.data_ptr<int8_t>();
  float* sp = out.step.data_ptr<float>();
  float* cp = out.csum.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f);
  at::parallel_for(0, M * G, 512, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const float* xb = xp + i * kBlock;
      __m256 v[4];
      __m256 mx = _mm256_setzero_ps();
      for (int j = 0; j < 4; ++j) {
        v[j] = _mm256_loadu_ps(xb + 8 * j);
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[j]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
      const float amax = _mm_cvtss_f32(m4);
      const __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
      __m256i c[4];
      __m256i sum = _mm256_setzero_si256();
      for (int j = 0; j < 4; ++j) {
        c[j] = _mm256_cvtps_epi32(
            _mm256_round_ps(_mm256_mul_ps(v[j], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        sum = _mm256_add_epi32(sum, c[j]);
      }
      // packs interleave the 128-bit lanes; the permute puts the 32 codes back in order
      __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
      p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(qp + i * kBlock), p);
      __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
      s4 = _mm_hadd_epi32(s4, s4);
      s4 = _mm_hadd_epi32(s4, s4);
      const float step = amax / 127.0f;
      sp[i] = step;
      cp[i] = step * static_cast<float>(_mm_cvtsi128_si32(s4));
    }
  });
  return out;
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// exp for x <= 0 (Cephes' expf: x = n ln2 + r, a degree-6 polynomial in r, times 2^n); ~1 ulp,
// exactly 0 below -87.3 (masked scores are -inf).
inline __m256 exp_nonpositive(__m256 x) {
  const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_and_ps(_mm256_mul_ps(y, _mm256_castsi256_ps(e)), keep);
}

// An empty asm that claims to change v: GCC otherwise schedules a whole group's vpmaddubsw ahead of
// their sums and spills the partial sums to the stack (measured: 1.3x slower at 32-512 rows).
#define KEEP_IN_REGISTER(v) asm volatile("" : "+x"(v))

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// R rows x 8 columns of int4. w: the column block's G x 128 bytes; byte 4c + i of load j (0..3) of
// group g holds q[c, 32g + 4j + i] in its low nibble and q[c, 32g + 16 + 4j + i] in its high one.
template <int R>
__attribute__((noinline)) void int4_tile(const uint8_t* w, const float* ws, const float* wz, const int8_t* q, const float* step,
                      const float* csum, int64_t K, int64_t G, float* y, int64_t ldy) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < G; ++g) {
    __m256i s16[R];
    for (int j = 0; j < 4; ++j) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 128 + 32 * j));
      const __m256i lo = _mm256_and_si256(b, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
      for (int r = 0; r < R; ++r) {
        const int8_t* qr = q + r * K + g * kBlock;
        const __m256i t = _mm256_add_epi16(_mm256_maddubs_epi16(lo, broadcast4(qr + 4 * j)),
                                           _mm256_maddubs_epi16(hi, broadcast4(qr + 16 + 4 * j)));
        s16[r] = j ? _mm256_add_epi16(s16[r], t) : t;
        KEEP_IN_REGISTER(s16[r]);
      }
    }
    const __m256 sv = _mm256_loadu_ps(ws + g * kCols);
    const __m256 zv = _mm256_loadu_ps(wz + g * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[r], ones));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_mul_ps(sv, _mm256_broadcast_ss(step + r * G + g)), acc[r]);
      acc[r] = _mm256_fmadd_ps(zv, _mm256_broadcast_ss(csum + r * G + g), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + r * ldy, acc[r]);
}

// R rows x 8 columns of int8. w: the column block's G x 256 bytes; load j (0..7) of group g holds
// q[c, 32g + 4j .. 32g + 4j + 3] at bytes 4c..4c + 3. ws: the 8 columns' scales.
template <int R>
__attribute__((noinline)) void int8_tile(const int8_t* w, const float* ws, const int8_t* q, const float* step, int64_t K,
                      int64_t G, float* y, int64_t ldy) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < G; ++g) {
    __m256i s32[R];
    for (int r = 0; r < R; ++r) s32[r] = _mm256_setzero_si256();
    for (int j = 0; j < 8; ++j) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 256 + 32 * j));
      const __m256i mag = _mm256_abs_epi8(b);
      for (int r = 0; r < R; ++r) {
        const __m256i c = _mm256_sign_epi8(broadcast4(q + r * K + g * kBlock + 4 * j), b);
        s32[r] = _mm256_add_epi32(s32[r], _mm256_madd_epi16(_mm256_maddubs_epi16(mag, c), ones));
        KEEP_IN_REGISTER(s32[r]);
      }
    }
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[r]), _mm256_broadcast_ss(step + r * G + g), acc[r]);
    }
  }
  const __m256 sv = _mm256_loadu_ps(ws);
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + r * ldy, _mm256_mul_ps(acc[r], sv));
}

// Column blocks are split among threads; each thread passes all row tiles over kColBlocks blocks at
// a time. Rows in tiles of kRows and a remainder one by one do the same arithmetic per row.
template <typename Tile>
void for_tiles(int64_t M, int64_t N, const Tile& tile) {
  at::parallel_for(0, N / kCols, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t b0 = c0; b0 < c1; b0 += kColBlocks) {
      const int64_t b1 = std::min(c1, b0 + kColBlocks);
      int64_t m = 0;
      for (; m + kRows <= M; m += kRows)
        for (int64_t b = b0; b < b1; ++b) tile(std::integral_constant<int, kRows>{}, m, b);
      for (; m < M; ++m)
        for (int64_t b = b0; b < b1; ++b) tile(std::integral_constant<int, 1>{}, m, b);
    }
  });
}

void check_input(const at::Tensor& x, const at::Tensor& w, int64_t bytes_per_group) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 [M, K] tensor");
  TORCH_CHECK(x.size(1) % kBlock == 0, "K must be a multiple of 32, got ", x.size(1));
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1) / kBlock * bytes_per_group,
              "packed weights [N / 8, K / 32 * ", bytes_per_group, "] expected for K = ", x.size(1));
}

}  // namespace

namespace genloop_avx2 {

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros) {
  check_input(x, w, 128);
  TORCH_CHECK(w.scalar_type() == at::kByte, "int4 weights are uint8");
  const int64_t M = x.size(0), K = x.size(1), G = K / kBlock, N = w.size(0) * kCols;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && zeros.scalar_type() == at::kFloat &&
                  scales.is_contiguous() && zeros.is_contiguous() && scales.numel() == N * G &&
                  zeros.numel() == N * G,
              "scales and zeros must be contiguous float32 [N / 8, K / 32, 8]");
  const Codes c = quantize_rows(x);
  at::Tensor y = at::empty({M, N}, x.options());
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float *sp = scales.data_ptr<float>(), *zp = zeros.data_ptr<float>();
  const int8_t* qp = c.q.data_ptr<int8_t>();
  const float *stp = c.step.data_ptr<float>(), *csp = c.csum.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_tiles(M, N, [&](auto rows, int64_t m, int64_t b) {
    int4_tile<decltype(rows)::value>(wp + b * G * 128, sp + b * G * kCols, zp + b * G * kCols, qp + m * K,
                                     stp + m * G, csp + m * G, K, G, yp + m * N + b * kCols, N);
  });
  return y;
}

at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales) {
  check_input(x, w, 256);
  TORCH_CHECK(w.scalar_type() == at::kChar, "int8 weights are int8");
  const int64_t M = x.size(0), K = x.size(1), G = K / kBlock, N = w.size(0) * kCols;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == N,
              "scales must be contiguous float32 [N]");
  const Codes c = quantize_rows(x);
  at::Tensor y = at::empty({M, N}, x.options());
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scales.data_ptr<float>();
  const int8_t* qp = c.q.data_ptr<int8_t>();
  const float* stp = c.step.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for_tiles(M, N, [&](auto rows, int64_t m, int64_t b) {
    int8_tile<decltype(rows)::value>(wp + b * G * 256, sp + b * kCols, qp + m * K, stp + m * G, K, G,
                                     yp + m * N + b * kCols, N);
  });
  return y;
}

// RMSNorm of each row of x [..., D] (fp32, contiguous): weight * (x * rsqrt(mean(x^2) + eps)), the
// two products rounded one at a time as the PyTorch expression rounds them.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && weight.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && x.dim() >= 1 && weight.numel() == x.size(-1),
              "rms_norm takes contiguous float32 x [..., D] and weight [D]");
  const int64_t D = x.size(-1), rows = D ? x.numel() / D : 0;
  at::Tensor y = at::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = weight.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float* xr = xp + r * D;
      float* yr = yp + r * D;
      __m256 acc = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= D; i += 8) {
        const __m256 v = _mm256_loadu_ps(xr + i);
        acc = _mm256_fmadd_ps(v, v, acc);
      }
      float ss = hsum(acc);
      for (; i < D; ++i) ss += xr[i] * xr[i];
      const float scale = 1.0f / std::sqrt(ss / static_cast<float>(D) + static_cast<float>(eps));
      const __m256 s = _mm256_set1_ps(scale);
      for (i = 0; i + 8 <= D; i += 8)
        _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_loadu_ps(wp + i), _mm256_mul_ps(_mm256_loadu_ps(xr + i), s)));
      for (; i < D; ++i) yr[i] = wp[i] * (xr[i] * scale);
    }
  });
  return y;
}

// Rotary embedding of x [B, H, T, d] (any strides, contiguous last dim) by cos/sin [B, 1, T, d]:
// x * cos + cat(-x2, x1) * sin, each product and the sum rounded as PyTorch rounds them.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == at::kFloat && x.stride(3) == 1 && x.size(3) % 2 == 0,
              "x must be float32 [B, H, T, d] with a contiguous last dim and even d");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 4 && cos.size(0) == x.size(0) && cos.size(1) == 1 &&
                  cos.size(2) == x.size(2) && cos.size(3) == x.size(3) && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat && cos.stride(3) == 1 && sin.stride(3) == 1,
              "cos and sin must be float32 [B, 1, T, d] with a contiguous last dim");
  const int64_t B = x.size(0), H = x.size(1), T = x.size(2), d = x.size(3), half = d / 2;
  at::Tensor y = at::empty(x.sizes(), x.options());
  const float *xp = x.data_ptr<float>(), *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const int64_t x0 = x.stride(0), x1 = x.stride(1), x2 = x.stride(2);
  const int64_t c0 = cos.stride(0), c2 = cos.stride(2), s0 = sin.stride(0), s2 = sin.stride(2);
  at::parallel_for(0, B * H * T, 256, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / (H * T), h = (i / T) % H, t = i % T;
      const float* xr = xp + b * x0 + h * x1 + t * x2;
      const float* c = cp + b * c0 + t * c2;
      const float* s = sp + b * s0 + t * s2;
      float* yr = yp + i * d;
      for (int64_t j = 0; j < half; ++j) {
        const float a = xr[j] * c[j], r = -xr[j + half] * s[j];
        yr[j] = a + r;
        const float a2 = xr[j + half] * c[j + half], r2 = xr[j] * s[j + half];
        yr[j + half] = a2 + r2;
      }
    }
  });
  return y;
}

// Queries against cached keys/values: q [B, H, T, d] contiguous (T new tokens per row), k/v
// [B, Hkv, S, d] fp32 or fp16 with a contiguous last dim (views of the engine's preallocated cache;
// fp16 for int4 models: half the bytes to read), mask bool
// [B, T, S] or [B, S] (T == 1) (true: visible) or none -> [B, H, T, d]. Query head h reads key/value
// head h / (H / Hkv). A query's result depends only on the keys it sees: its loops stop after its
// last visible key, exp always runs 8 lanes (a partial block padded with -inf) and each lane sums
// the positions s % 8 == lane, so neither S, T, the batch nor padding change a bit of it (PyTorch's
// SDPA rounds differently for other lengths; with int8 activations downstream that flips tokens).
namespace {

inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// decode_attention's loops for K/V elements of type T (float, or Half: the int4 engine's cache).
// kD8 > 0: the head size / 8 known at compile time (64 for SmolLM2 and most small models): the
// loops over it unroll and the 8 output sums stay in registers (~1.3x faster).
template <typename T, int64_t kD8>
void attend_rows(const float* qp, const T* kp, const T* vp, const bool* mp, float* op, int64_t B, int64_t H,
                 int64_t T_, int64_t d, int64_t Hkv, int64_t S, const int64_t (&ks)[3], const int64_t (&vs)[3],
                 float sc) {
  const int64_t G = H / Hkv, D8 = kD8 > 0 ? kD8 : d / 8, S8 = (S + 7) / 8 * 8;
  at::parallel_for(0, B * Hkv * T_, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> p(S8);
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / (Hkv * T_), h = (i / T_) % Hkv, t = i % T_;
      const bool* mr = mp != nullptr ? mp + (b * T_ + t) * S : nullptr;
      int64_t n = S;  // keys up to the last visible one
      if (mr != nullptr)
        while (n > 0 && !mr[n - 1]) --n;
      const T* kb = kp + b * ks[0] + h * ks[1];
      const T* vb = vp + b * vs[0] + h * vs[1];
      for (int64_t g = 0; g < G; ++g) {
        const float* qg = qp + ((b * H + h * G + g) * T_ + t) * d;
        float* og = op + ((b * H + h * G + g) * T_ + t) * d;
        if (n == 0) {  // nothing visible: zeros, not NaN
          std::fill(og, og + d, 0.0f);
          continue;
        }
        int64_t s = 0;
        for (; s + 8 <= n; s += 8) {  // eight keys at a time: eight independent chains of FMAs
          __m256 a[8];
          for (int u = 0; u < 8; ++u) a[u] = _mm256_setzero_ps();
          for (int64_t j = 0; j < D8; ++j) {
            const __m256 qv = _mm256_loadu_ps(qg + 8 * j);
            for (int u = 0; u < 8; ++u) a[u] = _mm256_fmadd_ps(qv, load8(kb + (s + u) * ks[2] + 8 * j), a[u]);
          }
          for (int u = 0; u < 8; ++u) p[s + u] = hsum(a[u]) * sc;
        }
        for (; s < n; ++s) {
          __m256 a0 = _mm256_setzero_ps();
          for (int64_t j = 0; j < D8; ++j)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(qg + 8 * j), load8(kb + s * ks[2] + 8 * j), a0);
          p[s] = hsum(a0) * sc;
        }
        const int64_t n8 = (n + 7) / 8 * 8;
        for (s = 0; s < n8; ++s)
          if (s >= n || (mr != nullptr && !mr[s])) p[s] = -INFINITY;
        float mx = -INFINITY;
        for (s = 0; s < n; ++s) mx = std::max(mx, p[s]);
        __m256 acc = _mm256_setzero_ps();
        const __m256 mv = _mm256_set1_ps(mx);
        for (s = 0; s < n8; s += 8) {
          const __m256 e = exp_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(p.data() + s), mv));
          _mm256_storeu_ps(p.data() + s, e);
          acc = _mm256_add_ps(acc, e);
        }
        const float sum = hsum(acc);
        __m256 o[32];
        for (int64_t j = 0; j < D8; ++j) o[j] = _mm256_setzero_ps();
        for (s = 0; s < n; ++s) {
          if (p[s] == 0.0f) continue;
          const __m256 w = _mm256_set1_ps(p[s]);
          const T* vr = vb + s * vs[2];
          for (int64_t j = 0; j < D8; ++j) o[j] = _mm256_fmadd_ps(w, load8(vr + 8 * j), o[j]);
        }
        const __m256 inv = _mm256_set1_ps(1.0f / sum);
        for (int64_t j = 0; j < D8; ++j) _mm256_storeu_ps(og + 8 * j, _mm256_mul_ps(o[j], inv));
      }
    }
  });
}

template <typename T>
void attend(const float* qp, const T* kp, const T* vp, const bool* mp, float* op, int64_t B, int64_t H, int64_t T_,
            int64_t d, int64_t Hkv, int64_t S, const int64_t (&ks)[3], const int64_t (&vs)[3], float sc) {
  if (d == 64)
    attend_rows<T, 8>(qp, kp, vp, mp, op, B, H, T_, d, Hkv, S, ks, vs, sc);
  else
    attend_rows<T, 0>(qp, kp, vp, mp, op, B, H, T_, d, Hkv, S, ks, vs, sc);
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.is_contiguous() && q.scalar_type() == at::kFloat,
              "q must be a contiguous float32 [B, H, T, d] tensor");
  const bool half = k.scalar_type() == at::kHalf;
  TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes() && (half || k.scalar_type() == at::kFloat) &&
                  v.scalar_type() == k.scalar_type() && k.stride(3) == 1 && v.stride(3) == 1,
              "k and v must be float32 or float16 [B, Hkv, S, d] with a contiguous last dim");
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), d = q.size(3), Hkv = k.size(1), S = k.size(2);
  TORCH_CHECK(k.size(0) == B && k.size(3) == d && Hkv > 0 && H % Hkv == 0 && d % 8 == 0 && d <= 256,
              "shapes: q [B, H, T, d], k/v [B, Hkv, S, d] with H % Hkv == 0 and d a multiple of 8 up to 256");
  const bool* mp = nullptr;
  at::Tensor m;
  if (mask.has_value()) {
    m = mask->contiguous();
    TORCH_CHECK(m.scalar_type() == at::kBool && m.numel() == B * T * S, "mask must be bool [B, T, S]");
    mp = m.data_ptr<bool>();
  }
  at::Tensor out = at::empty_like(q);
  const int64_t ks[3] = {k.stride(0), k.stride(1), k.stride(2)}, vs[3] = {v.stride(0), v.stride(1), v.stride(2)};
  const float sc = static_cast<float>(scale);
  if (half)
    attend(q.data_ptr<float>(), k.data_ptr<at::Half>(), v.data_ptr<at::Half>(), mp, out.data_ptr<float>(), B, H,
           T, d, Hkv, S, ks, vs, sc);
  else
    attend(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), mp, out.data_ptr<float>(), B, H, T, d,
           Hkv, S, ks, vs, sc);
  return out;
}

// SwiGLU's gate: x [..., 2F] (gate | up, the fused layer's output, contiguous) -> silu(gate) * up,
// [..., F]. sigmoid from exp(-|g|) (never overflows): 1 / (1 + e) for g >= 0, e / (1 + e) below.
at::Tensor silu_mul(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() >= 1 && x.size(-1) % 2 == 0,
              "silu_mul takes a contiguous float32 [..., 2F] tensor");
  const int64_t F = x.size(-1) / 2, rows = F ? x.numel() / (2 * F) : 0;
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = F;
  at::Tensor y = at::empty(shape, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  at::parallel_for(0, rows, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) {
      const float *g = xp + r * 2 * F, *u = g + F;
      float* yr = yp + r * F;
      int64_t i = 0;
      for (; i + 8 <= F; i += 8) {
        const __m256 gv = _mm256_loadu_ps(g + i);
        const __m256 e = exp_nonpositive(_mm256_or_ps(gv, sign));  // exp(-|g|)
        const __m256 num = _mm256_blendv_ps(one, e, gv);  // sign bit of g set: e
        const __m256 sig = _mm256_div_ps(num, _mm256_add_ps(one, e));
        _mm256_storeu_ps(yr + i, _mm256_mul_ps(_mm256_mul_ps(gv, sig), _mm256_loadu_ps(u + i)));
      }
      for (; i < F; ++i) yr[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
  return y;
}

}  // namespace genloop_avx2

TORCH_LIBRARY(genloop, m) {
  m.def("int4_mm(Tensor x, Tensor w, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int8_mm(Tensor x, Tensor w, Tensor scales) -> Tensor");
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def("silu_mul(Tensor x) -> Tensor");
  m.def("decode_block(Tensor x, Tensor[] weights, float eps, int heads, Tensor(a!) k_cache, Tensor(b!) v_cache, int start, Tensor past, Tensor cos, Tensor sin) -> Tensor");
  m.def("refine_top(Tensor(a!) y, Tensor x, Tensor table, int k) -> ()");
}

TORCH_LIBRARY_IMPL(genloop, CPU, m) {
  using namespace genloop_avx2;
  m.impl("int4_mm", &int4_mm);
  m.impl("int8_mm", &int8_mm);
  m.impl("rms_norm", &rms_norm);
  m.impl("rotary", &rotary);
  m.impl("decode_attention", &decode_attention);
  m.impl("silu_mul", &silu_mul);
  m.impl("decode_block", &decode_block);
  m.impl("refine_top", &refine_top);
}
