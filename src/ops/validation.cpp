#include "ops/validation.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace graddrop {
namespace ops {
namespace {

template <typename Sizes>
std::string shape_string(Sizes sizes) {
  std::ostringstream text;
  text << "[";
  for (size_t i = 0; i < sizes.size(); ++i) text << (i ? ", " : "") << sizes[i];
  text << "]";
  return text.str();
}

// The normal range [smallest normal, largest finite] of the op-math dtype. epsilon and scale are
// given as float64 but used in op-math: a value outside this range would become 0 or inf there
// (epsilon 1e-50 in float32 turns a dead feature's purity into 0/0, scale 1e39 into inf * 0).
// Subnormals are refused too: flush-to-zero modes turn them into 0.
void check_representable(double value, const char* name, const at::Tensor& activation,
                         at::ScalarType opmath) {
  const bool is_double = opmath == at::kDouble;
  const double lowest = is_double ? std::numeric_limits<double>::min()
                                  : static_cast<double>(std::numeric_limits<float>::min());
  const double highest = is_double ? std::numeric_limits<double>::max()
                                   : static_cast<double>(std::numeric_limits<float>::max());
  TORCH_CHECK_VALUE(value >= lowest && value <= highest, "graddrop: ", name, " = ", value,
                    " cannot be used by a ", activation.scalar_type(),
                    " activation: its op-math dtype ", is_double ? "float64" : "float32",
                    " holds values in [", lowest, ", ", highest, "] (outside, ", name,
                    " would become 0 or inf)");
}

void check_dense(const at::Tensor& tensor, const std::string& name) {
  TORCH_CHECK_TYPE(!tensor.defined() || tensor.layout() == at::kStrided, "graddrop: ", name,
                   " must be a dense (strided) tensor, got layout ", tensor.layout(),
                   "; convert it with .to_dense()");
}

void check_dense_layouts(const CombineRequest& request) {
  check_dense(request.activation, "activation");
  for (size_t task = 0; task < request.grads.size(); ++task) {
    const optional<at::Tensor> entry = request.grads.get(task);
    if (entry.has_value()) check_dense(*entry, "grads[" + std::to_string(task) + "]");
  }
  if (request.uniform.has_value()) check_dense(*request.uniform, "uniform (U)");
  if (request.keep_probability.has_value()) {
    check_dense(*request.keep_probability, "keep_probability (f(P))");
  }
}

std::vector<at::Tensor> checked_grads(const at::Tensor& activation,
                                      const c10::List<optional<at::Tensor>>& grads) {
  TORCH_CHECK_VALUE(grads.size() >= 1,
                    "graddrop: grads must hold at least one task gradient, got 0");
  std::vector<at::Tensor> result;
  result.reserve(grads.size());
  for (size_t task = 0; task < grads.size(); ++task) {
    const optional<at::Tensor> entry = grads.get(task);
    if (!entry.has_value() || !entry->defined()) {
      result.emplace_back();
      continue;
    }
    const at::Tensor& grad = *entry;
    TORCH_CHECK_VALUE(grad.sym_sizes() == activation.sym_sizes(), "graddrop: grads[", task,
                      "] has shape ", shape_string(grad.sym_sizes()),
                      " but the activation has shape ", shape_string(activation.sym_sizes()));
    TORCH_CHECK_TYPE(grad.scalar_type() == activation.scalar_type(), "graddrop: grads[", task,
                     "] has dtype ", grad.scalar_type(), " but the activation has dtype ",
                     activation.scalar_type());
    TORCH_CHECK(grad.device() == activation.device(), "graddrop: grads[", task,
                "] is on device ", grad.device(), " but the activation is on ",
                activation.device());
    result.push_back(grad.contiguous());
  }
  return result;
}

// An explicit per-purity-element tensor (U or f(P)): shape and device, converted to op-math.
at::Tensor checked_purity_shaped(const at::Tensor& tensor, const char* name,
                                 const CombineArguments& arguments,
                                 const std::vector<c10::SymInt>& purity_shape) {
  TORCH_CHECK_VALUE(tensor.sym_sizes() == c10::SymIntArrayRef(purity_shape), "graddrop: ", name,
                    " must have the purity's shape ", shape_string(purity_shape), ", got ",
                    shape_string(tensor.sym_sizes()));
  TORCH_CHECK_TYPE(at::isFloatingType(tensor.scalar_type()), "graddrop: ", name,
                   " must be a floating tensor, got dtype ", tensor.scalar_type());
  TORCH_CHECK(tensor.device() == arguments.activation.device(), "graddrop: ", name,
              " is on device ", tensor.device(), " but the activation is on ",
              arguments.activation.device());
  return tensor.to(arguments.opmath_type()).contiguous();
}

// Whether the values of an explicit U or f(P) are range-checked here. On the CPU they are. On a
// GPU a check would read a value back to the host: a device synchronisation on every call of the
// custom keep-function path, and an error under CUDA graph capture. There the kernels instead
// treat an out-of-range U or f(P) like a NaN f(P) (detail::checked_keep): the coefficients of
// that element of P come out NaN, so the mistake shows in the output rather than passing silently.
bool values_checkable_on_host(const at::Tensor& tensor) {
  return tensor.device().is_cpu() && tensor.numel() > 0;
}

void check_uniform_values(const at::Tensor& draw) {
  if (!values_checkable_on_host(draw)) return;
  const bool in_range = at::logical_and(draw >= 0, draw < 1).all().item<bool>();
  TORCH_CHECK_VALUE(in_range, "graddrop: uniform (U) must lie in [0, 1), got values in [",
                    draw.min().item<double>(), ", ", draw.max().item<double>(), "]");
}

void check_keep_probability_values(const at::Tensor& keep) {
  if (!values_checkable_on_host(keep)) return;
  const bool in_range =
      at::logical_or(at::logical_and(keep >= 0, keep <= 1), at::isnan(keep)).all().item<bool>();
  TORCH_CHECK_VALUE(in_range,
                    "graddrop: keep_probability (f(P), the keep function's values) must lie in "
                    "[0, 1], got values in [",
                    at::nan_to_num(keep).min().item<double>(), ", ",
                    at::nan_to_num(keep).max().item<double>(), "]");
}

}  // namespace

void check_num_tasks(int64_t num_tasks) {
  TORCH_CHECK_VALUE(num_tasks >= 1, "graddrop: num_tasks must be >= 1, got ", num_tasks);
}

void check_leak(c10::ArrayRef<double> leak, int64_t num_tasks) {
  TORCH_CHECK_VALUE(leak.empty() || static_cast<int64_t>(leak.size()) == num_tasks,
                    "graddrop: leak must hold num_tasks (", num_tasks, ") values, got ",
                    leak.size());
  for (size_t task = 0; task < leak.size(); ++task) {
    TORCH_CHECK_VALUE(leak[task] >= 0.0 && leak[task] <= 1.0, "graddrop: leak[", task,
                      "] must be in [0, 1], got ", leak[task]);
  }
}

void check_scale(double scale) {
  TORCH_CHECK_VALUE(std::isfinite(scale) && scale > 0.0,
                    "graddrop: scale must be a finite number > 0, got ", scale);
}

void check_epsilon(double epsilon) {
  TORCH_CHECK_VALUE(std::isfinite(epsilon) && epsilon > 0.0,
                    "graddrop: epsilon must be a finite number > 0, got ", epsilon);
}

void check_offset(int64_t offset, bool has_seed) {
  TORCH_CHECK_VALUE(offset >= 0, "graddrop: offset must be >= 0, got ", offset);
  TORCH_CHECK_VALUE(offset == 0 || has_seed, "graddrop: offset (", offset,
                    ") is used only with an explicit seed; pass seed too (without one each call "
                    "draws a fresh key and the offset would be ignored)");
}

SignSource parse_sign_source(c10::string_view name) {
  if (name == "activation_sign") return SignSource::kActivationSign;
  if (name == "activation_value") return SignSource::kActivationValue;
  if (name == "none") return SignSource::kNone;
  TORCH_CHECK_VALUE(false,
                    "graddrop: sign_source must be one of 'activation_sign', 'activation_value', "
                    "'none', got '",
                    std::string(name), "'");
}

KeepFunction parse_keep_function(c10::string_view name) {
  if (name == "linear") return KeepFunction::kLinear;
  if (name == "sigmoid") return KeepFunction::kSigmoid;
  if (name == "custom") return KeepFunction::kCustom;
  TORCH_CHECK_VALUE(false,
                    "graddrop: keep_function must be one of 'linear', 'sigmoid', 'custom', got '",
                    std::string(name), "'");
}

ZeroSign parse_zero_sign(c10::string_view name) {
  if (name == "drop") return ZeroSign::kDrop;
  if (name == "keep") return ZeroSign::kKeep;
  TORCH_CHECK_VALUE(false, "graddrop: zero_sign must be one of 'drop', 'keep', got '",
                    std::string(name), "'");
}

namespace {

// A 0-d activation has no batch dimension to marginalise: refused, not silently a no-op.
void check_batch_dimension(const at::Tensor& activation, bool marginalize_batch) {
  TORCH_CHECK_VALUE(!marginalize_batch || activation.dim() >= 1,
                    "graddrop: marginalize_batch needs an activation with a batch dimension, got "
                    "a 0-d activation; set marginalize_batch(false)");
}

}  // namespace

std::vector<c10::SymInt> purity_sym_shape_of(const at::Tensor& activation,
                                             bool marginalize_batch) {
  check_batch_dimension(activation, marginalize_batch);
  const auto sizes = activation.sym_sizes();
  return std::vector<c10::SymInt>(sizes.begin() + (marginalize_batch ? 1 : 0), sizes.end());
}

std::vector<int64_t> purity_shape_of(const at::Tensor& activation, bool marginalize_batch) {
  check_batch_dimension(activation, marginalize_batch);
  const auto sizes = activation.sizes();
  return std::vector<int64_t>(sizes.begin() + (marginalize_batch ? 1 : 0), sizes.end());
}

CombineArguments validate_combine(const CombineRequest& request) {
  const at::Tensor& activation = request.activation;
  TORCH_CHECK_VALUE(activation.defined(), "graddrop: activation is undefined");
  check_dense_layouts(request);
  const auto dtype = activation.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                       dtype == at::kBFloat16,
                   "graddrop: activation must be float32, float64, float16 or bfloat16, got "
                   "dtype ",
                   dtype);
  check_batch_dimension(activation, request.marginalize_batch);

  CombineArguments arguments;
  arguments.activation = activation.contiguous();
  arguments.grads = checked_grads(activation, request.grads);
  const auto num_tasks = arguments.num_tasks();
  check_leak(request.leak, num_tasks);
  arguments.leak.assign(static_cast<size_t>(num_tasks), 0.0);
  std::copy(request.leak.begin(), request.leak.end(), arguments.leak.begin());
  arguments.sign_source = parse_sign_source(request.sign_source);
  arguments.marginalize_batch = request.marginalize_batch;
  arguments.keep_function = parse_keep_function(request.keep_function);
  check_scale(request.scale);
  check_representable(request.scale, "scale", activation, arguments.opmath_type());
  arguments.scale = request.scale;
  arguments.zero_sign = parse_zero_sign(request.zero_sign);
  check_epsilon(request.epsilon);
  check_representable(request.epsilon, "epsilon", activation, arguments.opmath_type());
  arguments.epsilon = request.epsilon;
  arguments.keep_grad_norm = request.keep_grad_norm;
  arguments.statistics = request.statistics;

  // The concrete [rows, columns] view, for the kernels: not for meta tensors or symbolic sizes
  // (torch.compile's tracing), which reach no kernel.
  if (!activation.is_meta() && !activation.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    const int64_t numel = activation.numel();
    arguments.rows = request.marginalize_batch ? activation.size(0) : 1;
    arguments.columns = request.marginalize_batch
                            ? (arguments.rows == 0 ? 0 : numel / arguments.rows)
                            : numel;
    if (request.marginalize_batch && arguments.rows == 0) {
      // An empty batch still has features: P exists (0.5 everywhere) but no output element.
      int64_t features = 1;
      for (int64_t d = 1; d < activation.dim(); ++d) features *= activation.size(d);
      arguments.columns = features;
    }
    arguments.purity_shape = purity_shape_of(activation, request.marginalize_batch);
  }

  if (request.uniform.has_value() && request.uniform->defined()) {
    arguments.uniform = checked_purity_shaped(
        *request.uniform, "uniform (U)", arguments,
        purity_sym_shape_of(activation, request.marginalize_batch));
    // Checked after the conversion to op-math, which is what the kernels compare against.
    check_uniform_values(arguments.uniform);
  }
  if (request.keep_probability.has_value() && request.keep_probability->defined()) {
    // f(P) given replaces the built-in keep function; a keep_function other than 'custom' next
    // to it would be silently ignored.
    TORCH_CHECK_VALUE(arguments.keep_function == KeepFunction::kCustom,
                      "graddrop: keep_probability (f(P)) is given, so keep_function must be "
                      "'custom', got '",
                      std::string(request.keep_function), "' (which would be ignored)");
    arguments.keep_probability = checked_purity_shaped(
        *request.keep_probability, "keep_probability (f(P))", arguments,
        purity_sym_shape_of(activation, request.marginalize_batch));
    check_keep_probability_values(arguments.keep_probability);
  } else {
    TORCH_CHECK_VALUE(arguments.keep_function != KeepFunction::kCustom,
                      "graddrop: keep_function 'custom' needs keep_probability (f(P)) to be "
                      "given");
  }
  // The Philox key is 64 bits and the schema's int is signed: a negative seed is the key's two's
  // complement (seed -1 is key 2^64 - 1), so every key is reachable from Python, and the C++
  // API's uint64_t seed reaches the same key.
  if (request.seed.has_value()) arguments.seed = static_cast<uint64_t>(*request.seed);
  check_offset(request.offset, request.seed.has_value());
  arguments.offset = static_cast<uint64_t>(request.offset);
  return arguments;
}

void check_out(const at::Tensor& out, const at::Tensor& activation) {
  TORCH_CHECK_VALUE(out.defined(), "graddrop: out is undefined");
  TORCH_CHECK_VALUE(out.sym_sizes() == activation.sym_sizes(), "graddrop: out has shape ",
                    shape_string(out.sym_sizes()), " but the activation has shape ",
                    shape_string(activation.sym_sizes()));
  TORCH_CHECK_TYPE(out.scalar_type() == activation.scalar_type(), "graddrop: out has dtype ",
                   out.scalar_type(), " but the activation has dtype ", activation.scalar_type());
  TORCH_CHECK(out.device() == activation.device(), "graddrop: out is on device ", out.device(),
              " but the activation is on ", activation.device());
  TORCH_CHECK_VALUE(out.layout() == at::kStrided && out.is_contiguous(),
                    "graddrop: out must be a contiguous dense tensor");
}

at::ScalarType CombineArguments::opmath_type() const {
  return activation.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ops
}  // namespace graddrop
