#include "models/nn/quant.h"

#include <stdexcept>
#include <string>
#include <vector>

#include "models/nn/gemv.h"

namespace sinkflow {

Q8Matrix quantize_q8(const at::Tensor& w) {
  if (w.dim() != 2 || !at::isFloatingType(w.scalar_type()))
    throw std::invalid_argument("quantize_q8: expected a 2-D floating-point matrix, found " + std::to_string(w.dim()) +
                                "-D " + std::string(c10::toString(w.scalar_type())));
  const int64_t n = w.size(0), k = w.size(1), nb = q8_blocks(k);
  at::Tensor wf = w.to(at::kFloat);
  if (nb * kQ8Block != k) wf = at::constant_pad_nd(wf, {0, nb * kQ8Block - k});
  const at::Tensor blocks = wf.reshape({n, nb, kQ8Block});
  const at::Tensor scales = (blocks.abs().amax(-1) / 127.0).to(at::kHalf);
  const at::Tensor s = scales.to(at::kFloat).unsqueeze(-1);
  const at::Tensor q = at::where(s > 0, blocks / s, at::zeros_like(blocks)).round_().clamp_(-127, 127);
  return {q.to(at::kChar).reshape({n, nb * kQ8Block}).narrow(1, 0, k).contiguous(), scales.contiguous()};
}

at::Tensor dequantize_q8(const at::Tensor& values, const at::Tensor& scales, at::ScalarType dtype) {
  const int64_t k = values.size(-1);
  if (values.dim() == 2 && values.is_contiguous() && scales.is_contiguous() && values.device().is_cpu() &&
      scales.scalar_type() == at::kHalf && scales.size(0) == values.size(0) && scales.size(1) == q8_blocks(k)) {
    at::Tensor out = at::empty(values.sizes(), values.options().dtype(at::kFloat));
    dequantize_q8_rows(values.data_ptr<int8_t>(), reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>()),
                       out.data_ptr<float>(), values.size(0), k);
    return dtype == at::kFloat ? out : out.to(dtype);
  }
  const at::Tensor s = scales.to(at::kFloat).repeat_interleave(kQ8Block, -1).narrow(-1, 0, k);
  return (values.to(at::kFloat) * s).to(dtype);
}

at::Tensor store_narrowed(at::Tensor& param, const at::Tensor& matrix, at::ScalarType dtype) {
  if (dtype != at::kChar) {
    param.set_data(matrix.to(dtype).contiguous());
    return {};
  }
  Q8Matrix q = quantize_q8(matrix);
  param.set_data(q.values);
  return std::move(q.scales);
}

at::Tensor embedding_rows(const at::Tensor& w, const at::Tensor& scales, const at::Tensor& ids) {
  if (!scales.defined()) return at::embedding(w, ids);
  const at::Tensor flat = ids.reshape({-1});
  std::vector<int64_t> shape = ids.sizes().vec();
  shape.push_back(w.size(1));
  return dequantize_q8(w.index_select(0, flat), scales.index_select(0, flat)).view(shape);
}

}  // namespace sinkflow
