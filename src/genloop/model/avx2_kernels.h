// genloop's AVX2 ops (avx2_kernels.cpp), shared with the fused decode block (avx2_block.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace genloop_avx2 {

at::Tensor int4_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& zeros);
at::Tensor int8_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& mask, double scale);
at::Tensor silu_mul(const at::Tensor& x);
at::Tensor decode_block(const at::Tensor& x, at::TensorList weights, double eps, int64_t heads,
                        at::Tensor& k_cache, at::Tensor& v_cache, int64_t start, const at::Tensor& past,
                        const at::Tensor& cos, const at::Tensor& sin);
void refine_top(at::Tensor& y, const at::Tensor& x, const at::Tensor& table, int64_t k);

}  // namespace genloop_avx2
