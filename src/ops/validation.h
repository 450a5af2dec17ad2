#pragma once
// Every check of graddrop's arguments, written once: the operator's entry (combine_op.cpp), the
// C++ options (GradDropOptions::validate) and the Python package (through the check_options
// operator) all call these. Each throws a typed c10 error that names the argument and its
// value, so Python users get the conventional exception: c10::ValueError (ValueError) for a
// value or shape out of range, c10::TypeError (TypeError) for a wrong dtype or layout, plain
// c10::Error (RuntimeError) for the rest (devices, autograd misuse).
#include <cstdint>
#include <vector>

#include <ATen/core/List.h>
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include "graddrop/compat.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace ops {

void check_num_tasks(int64_t num_tasks);
// An empty leak means all zero.
void check_leak(c10::ArrayRef<double> leak, int64_t num_tasks);
void check_scale(double scale);
void check_epsilon(double epsilon);
// The offset is used only with an explicit seed.
void check_offset(int64_t offset, bool has_seed);

SignSource parse_sign_source(c10::string_view name);
KeepFunction parse_keep_function(c10::string_view name);
ZeroSign parse_zero_sign(c10::string_view name);

// The raw arguments of one combine call, as the schema has them (all but the generator and the
// group, which only the kernels and the group protocol use).
struct CombineRequest {
  const at::Tensor& activation;
  const c10::List<optional<at::Tensor>>& grads;
  c10::ArrayRef<double> leak;
  c10::string_view sign_source;
  bool marginalize_batch;
  c10::string_view keep_function;
  double scale;
  c10::string_view zero_sign;
  double epsilon;
  bool keep_grad_norm;
  const optional<at::Tensor>& uniform;
  const optional<at::Tensor>& keep_probability;
  optional<int64_t> seed;
  int64_t offset;
  bool statistics;
};

// Checks every argument and makes the tensors contiguous. Reads no tensor data except an
// explicit U or f(P) on the CPU (their range). Shapes are compared as SymInts, so meta and fake
// tensors with symbolic sizes pass through it too (their concrete layout is left empty).
CombineArguments validate_combine(const CombineRequest& request);

// Refuses an `out` that does not have the activation's shape, dtype and device, or is not
// contiguous, naming what differs.
void check_out(const at::Tensor& out, const at::Tensor& activation);

// The shape of P for an activation; a 0-d activation with marginalize_batch is refused.
std::vector<int64_t> purity_shape_of(const at::Tensor& activation, bool marginalize_batch);
// The same for sizes that may be symbolic (meta and fake tensors).
std::vector<c10::SymInt> purity_sym_shape_of(const at::Tensor& activation,
                                             bool marginalize_batch);

}  // namespace ops
}  // namespace graddrop
