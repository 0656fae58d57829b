// Helpers of the CPU kernels: work split and the checks of the backward ops' extra inputs.
#pragma once
#include <ATen/ATen.h>
#include <ATen/TensorIterator.h>

#include <algorithm>

namespace indeed::cpu {

// Rows per at::parallel_for task: about GRAIN_SIZE elements, at least one row.
inline int64_t rows_per_task(int64_t row_length) {
  return std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(row_length, 1));
}

// t in dtype: t itself when it has it already (Tensor::to would still dispatch an aten::to).
inline at::Tensor in_dtype(const at::Tensor& t, at::ScalarType dtype) {
  return t.scalar_type() == dtype ? t : t.to(dtype);
}

// A tensor the backward op receives alongside the forward inputs (an upstream gradient,
// saved logits) must have the shape and dtype the forward gave it.
inline void check_like(const char* name, const at::Tensor& t, at::IntArrayRef shape, at::ScalarType dtype,
                       const at::Device& device) {
  TORCH_CHECK_VALUE(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, name, " must be on ", device, ", got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ", t.scalar_type());
}

}  // namespace indeed::cpu
