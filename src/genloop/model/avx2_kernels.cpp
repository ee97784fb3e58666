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

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>

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

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

// R rows x 8 columns of int4. w: the column block's G x 128 bytes; byte 4c + i of load j (0..3) of
// group g holds q[c, 32g + 4j + i] in its low nibble and q[c, 32g + 16 + 4j + i] in its high one.
template <int R>
inline void int4_tile(const uint8_t* w, const float* ws, const float* wz, const int8_t* q, const float* step,
                      const float* csum, int64_t K, int64_t G, float* y, int64_t ldy) {
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const __m256i mask = _mm256_set1_epi8(0x0F);
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t g = 0; g < G; ++g) {
    __m256i s16[R];
    for (int r = 0; r < R; ++r) s16[r] = _mm256_setzero_si256();
    for (int j = 0; j < 4; ++j) {
      const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + g * 128 + 32 * j));
      const __m256i lo = _mm256_and_si256(b, mask);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(b, 4), mask);
      for (int r = 0; r < R; ++r) {
        const int8_t* qr = q + r * K + g * kBlock;
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, broadcast4(qr + 4 * j)));
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, broadcast4(qr + 16 + 4 * j)));
      }
    }
    const __m256 sv = _mm256_loadu_ps(ws + g * kCols);
    const __m256 zv = _mm256_loadu_ps(wz + g * kCols);
    for (int r = 0; r < R; ++r) {
      const __m256 dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(s16[r], ones));
      acc[r] = _mm256_fmadd_ps(dot, _mm256_mul_ps(sv, _mm256_set1_ps(step[r * G + g])), acc[r]);
      acc[r] = _mm256_fmadd_ps(zv, _mm256_set1_ps(csum[r * G + g]), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + r * ldy, acc[r]);
}

// R rows x 8 columns of int8. w: the column block's G x 256 bytes; load j (0..7) of group g holds
// q[c, 32g + 4j .. 32g + 4j + 3] at bytes 4c..4c + 3. ws: the 8 columns' scales.
template <int R>
inline void int8_tile(const int8_t* w, const float* ws, const int8_t* q, const float* step, int64_t K,
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
      }
    }
    for (int r = 0; r < R; ++r)
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s32[r]), _mm256_set1_ps(step[r * G + g]), acc[r]);
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

}  // namespace

TORCH_LIBRARY(genloop, m) {
  m.def("int4_mm(Tensor x, Tensor w, Tensor scales, Tensor zeros) -> Tensor");
  m.def("int8_mm(Tensor x, Tensor w, Tensor scales) -> Tensor");
}

TORCH_LIBRARY_IMPL(genloop, CPU, m) {
  m.impl("int4_mm", &int4_mm);
  m.impl("int8_mm", &int8_mm);
}
