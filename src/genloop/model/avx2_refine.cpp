// A quantized output head's top k logits per row recomputed in fp32 from the float table, in place.
//
// As PyTorch calls (topk, a [M, k, K] gather, bmm, scatter) this costs SmolLM2 ~3 ms of a 50 ms
// decode step at 32 rows, most of it topk's full sort network over 49k logits and the gathered copy.
// Here one pass per row keeps a min-heap of the k largest (a vector compare against the heap's least
// skips almost every logit once the heap has filled), then k dot products read the table rows where
// they lie. A row's result depends only on that row.

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <vector>

#include "avx2_kernels.h"

namespace genloop_avx2 {
namespace {

struct Entry {
  float v;
  int64_t i;
};

// Restores the min-heap below `pos` after h[pos] changed.
void sift_down(Entry* h, int64_t k, int64_t pos) {
  const Entry e = h[pos];
  while (true) {
    int64_t c = 2 * pos + 1;
    if (c >= k) break;
    if (c + 1 < k && h[c + 1].v < h[c].v) ++c;
    if (!(h[c].v < e.v)) break;
    h[pos] = h[c];
    pos = c;
  }
  h[pos] = e;
}

float dot(const float* a, const float* b, int64_t K) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= K; j += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
  }
  for (; j + 8 <= K; j += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
  const __m256 s = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float total = _mm_cvtss_f32(h);
  for (; j < K; ++j) total += a[j] * b[j];
  return total;
}

}  // namespace

// y [M, N] fp32 (changed in place), x [M, K] fp32 (the head's input), table [N, K] fp32, 0 < k <= N.
void refine_top(at::Tensor& y, const at::Tensor& x, const at::Tensor& table, int64_t k) {
  TORCH_CHECK(y.dim() == 2 && x.dim() == 2 && table.dim() == 2 && y.is_contiguous() && x.is_contiguous() &&
                  table.is_contiguous(),
              "refine_top takes contiguous y [M, N], x [M, K] and table [N, K]");
  TORCH_CHECK(y.scalar_type() == at::kFloat && x.scalar_type() == at::kFloat && table.scalar_type() == at::kFloat,
              "refine_top works on float32 tensors");
  const int64_t M = y.size(0), N = y.size(1), K = x.size(1);
  TORCH_CHECK(x.size(0) == M && table.size(0) == N && table.size(1) == K, "shapes: y [M, N], x [M, K], table [N, K]");
  TORCH_CHECK(k > 0 && k <= N, "k must be in 1..N");
  float* yp = y.data_ptr<float>();
  const float *xp = x.data_ptr<float>(), *tp = table.data_ptr<float>();
  at::parallel_for(0, M, 1, [&](int64_t lo, int64_t hi) {
    std::vector<Entry> heap(k);
    Entry* h = heap.data();
    for (int64_t m = lo; m < hi; ++m) {
      const float* row = yp + m * N;
      for (int64_t j = 0; j < k; ++j) h[j] = {row[j], j};
      for (int64_t p = k / 2 - 1; p >= 0; --p) sift_down(h, k, p);
      auto consider = [&](int64_t j) {
        if (row[j] > h[0].v) {
          h[0] = {row[j], j};
          sift_down(h, k, 0);
        }
      };
      int64_t j = k;
      for (; j < N && j % 8 != 0; ++j) consider(j);
      for (; j + 8 <= N; j += 8) {
        int bits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + j), _mm256_set1_ps(h[0].v), _CMP_GT_OQ));
        while (bits != 0) {
          consider(j + __builtin_ctz(bits));
          bits &= bits - 1;
        }
      }
      for (; j < N; ++j) consider(j);
      float* out = yp + m * N;
      for (int64_t e = 0; e < k; ++e) out[h[e].i] = dot(xp + m * K, tp + h[e].i * K, K);
    }
  });
}

}  // namespace genloop_avx2
