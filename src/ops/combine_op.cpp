// The graddrop operator library: schemas, the argument checks shared by every device, and the
// device-independent purity operator (used by the custom keep-function path).
#include "ops/combine_op.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "graddrop/options.h"

namespace graddrop {
namespace ops {
namespace {

std::string shape_string(at::IntArrayRef sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    text += (i ? ", " : "") + std::to_string(sizes[i]);
  }
  return text + "]";
}

std::vector<at::Tensor> checked_grads(const at::Tensor& activation,
                                      const c10::List<optional<at::Tensor>>& grads) {
  TORCH_CHECK(grads.size() >= 1, "graddrop: grads must hold at least one task gradient, got 0");
  std::vector<at::Tensor> result;
  result.reserve(grads.size());
  for (size_t task = 0; task < grads.size(); ++task) {
    const optional<at::Tensor> entry = grads.get(task);
    if (!entry.has_value() || !entry->defined()) {
      result.emplace_back();
      continue;
    }
    const at::Tensor& grad = *entry;
    TORCH_CHECK(grad.sizes() == activation.sizes(), "graddrop: grads[", task, "] has shape ",
                shape_string(grad.sizes()), " but the activation has shape ",
                shape_string(activation.sizes()));
    TORCH_CHECK(grad.scalar_type() == activation.scalar_type(), "graddrop: grads[", task,
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
                                 const CombineArguments& arguments) {
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(arguments.purity_shape), "graddrop: ", name,
              " must have the purity's shape ", shape_string(arguments.purity_shape), ", got ",
              shape_string(tensor.sizes()));
  TORCH_CHECK(at::isFloatingType(tensor.scalar_type()), "graddrop: ", name,
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
  return tensor.numel() > 0 && tensor.device().is_cpu();
}

// The normal range [smallest normal, largest finite] of the op-math dtype. epsilon and scale are
// given as float64 but used in op-math: a value outside this range would become 0 or inf there
// (epsilon 1e-50 in float32 turns a dead feature's purity into 0/0, scale 1e39 into inf * 0).
// Subnormals are refused too: flush-to-zero modes turn them into 0.
struct NormalRange {
  double lowest;
  double highest;
  const char* name;
};

NormalRange normal_range_of(at::ScalarType opmath) {
  if (opmath == at::kDouble) {
    return {std::numeric_limits<double>::min(), std::numeric_limits<double>::max(), "float64"};
  }
  return {static_cast<double>(std::numeric_limits<float>::min()),
          static_cast<double>(std::numeric_limits<float>::max()), "float32"};
}

void check_representable(double value, const char* name, const at::Tensor& activation,
                         at::ScalarType opmath) {
  const auto range = normal_range_of(opmath);
  TORCH_CHECK(value >= range.lowest && value <= range.highest, "graddrop: ", name, " = ", value,
              " cannot be used by a ", activation.scalar_type(),
              " activation: its op-math dtype ", range.name, " holds values in [", range.lowest,
              ", ", range.highest, "] (outside, ", name, " would become 0 or inf)");
}

void check_dense(const at::Tensor& tensor, const std::string& name) {
  TORCH_CHECK(!tensor.defined() || tensor.layout() == at::kStrided, "graddrop: ", name,
              " must be a dense (strided) tensor, got layout ", tensor.layout(),
              "; convert it with .to_dense()");
}

}  // namespace

void check_dense_layouts(const at::Tensor& activation,
                         const c10::List<optional<at::Tensor>>& grads,
                         const optional<at::Tensor>& uniform,
                         const optional<at::Tensor>& keep_probability) {
  check_dense(activation, "activation");
  for (size_t task = 0; task < grads.size(); ++task) {
    const optional<at::Tensor> entry = grads.get(task);
    if (entry.has_value()) check_dense(*entry, "grads[" + std::to_string(task) + "]");
  }
  if (uniform.has_value()) check_dense(*uniform, "uniform (U)");
  if (keep_probability.has_value()) check_dense(*keep_probability, "keep_probability (f(P))");
}

at::ScalarType CombineArguments::opmath_type() const {
  return activation.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::vector<int64_t> purity_shape_of(const at::Tensor& activation, bool marginalize_batch) {
  TORCH_CHECK(!marginalize_batch || activation.dim() >= 1,
              "graddrop: marginalize_batch needs an activation with a batch dimension, got a "
              "0-d activation; set marginalize_batch(false)");
  const auto sizes = activation.sizes();
  if (!marginalize_batch) return sizes.vec();
  return std::vector<int64_t>(sizes.begin() + 1, sizes.end());
}

CombineArguments prepare_combine(const at::Tensor& activation,
                                 const c10::List<optional<at::Tensor>>& grads,
                                 c10::ArrayRef<double> leak, c10::string_view sign_source,
                                 bool marginalize_batch, c10::string_view keep_function,
                                 double scale, c10::string_view zero_sign, double epsilon,
                                 bool keep_grad_norm, const optional<at::Tensor>& uniform,
                                 const optional<at::Tensor>& keep_probability,
                                 optional<int64_t> seed, int64_t offset, bool statistics) {
  TORCH_CHECK(activation.defined(), "graddrop: activation is undefined");
  check_dense_layouts(activation, grads, uniform, keep_probability);
  const auto dtype = activation.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf ||
                  dtype == at::kBFloat16,
              "graddrop: activation must be float32, float64, float16 or bfloat16, got dtype ",
              dtype);
  purity_shape_of(activation, marginalize_batch);  // the 0-d check, before anything else

  CombineArguments arguments;
  arguments.activation = activation.contiguous();
  arguments.grads = checked_grads(activation, grads);
  const auto num_tasks = arguments.num_tasks();
  TORCH_CHECK(leak.empty() || static_cast<int64_t>(leak.size()) == num_tasks,
              "graddrop: leak must hold one value per task (", num_tasks, "), got ", leak.size());
  arguments.leak.assign(static_cast<size_t>(num_tasks), 0.0);
  for (size_t task = 0; task < leak.size(); ++task) {
    TORCH_CHECK(leak[task] >= 0.0 && leak[task] <= 1.0, "graddrop: leak[", task,
                "] must be in [0, 1], got ", leak[task]);
    arguments.leak[task] = leak[task];
  }
  arguments.sign_source = sign_source_from_string(std::string(sign_source));
  arguments.marginalize_batch = marginalize_batch;
  arguments.keep_function = keep_function_from_string(std::string(keep_function));
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0,
              "graddrop: scale must be a finite number > 0, got ", scale);
  check_representable(scale, "scale", activation, arguments.opmath_type());
  arguments.scale = scale;
  arguments.zero_sign = zero_sign_from_string(std::string(zero_sign));
  TORCH_CHECK(std::isfinite(epsilon) && epsilon > 0.0,
              "graddrop: epsilon must be a finite number > 0, got ", epsilon);
  check_representable(epsilon, "epsilon", activation, arguments.opmath_type());
  arguments.epsilon = epsilon;
  arguments.keep_grad_norm = keep_grad_norm;
  arguments.statistics = statistics;

  const int64_t numel = activation.numel();
  arguments.rows = marginalize_batch ? activation.size(0) : 1;
  arguments.columns = marginalize_batch ? (arguments.rows == 0 ? 0 : numel / arguments.rows)
                                        : numel;
  if (marginalize_batch && arguments.rows == 0) {
    // An empty batch still has features: P exists (0.5 everywhere) but no output element.
    int64_t features = 1;
    for (int64_t d = 1; d < activation.dim(); ++d) features *= activation.size(d);
    arguments.columns = features;
  }
  arguments.purity_shape = purity_shape_of(activation, marginalize_batch);

  if (uniform.has_value() && uniform->defined()) {
    arguments.uniform = checked_purity_shaped(*uniform, "uniform (U)", arguments);
    // Checked after the conversion to op-math, which is what the kernels compare against. Only
    // where reading the values costs no device synchronisation (see values_checkable_on_host).
    if (values_checkable_on_host(arguments.uniform)) {
      const auto& draw = arguments.uniform;
      const bool in_range = at::logical_and(draw >= 0, draw < 1).all().item<bool>();
      TORCH_CHECK(in_range, "graddrop: uniform (U) must lie in [0, 1), got values in [",
                  draw.min().item<double>(), ", ", draw.max().item<double>(), "]");
    }
  }
  if (keep_probability.has_value() && keep_probability->defined()) {
    // f(P) given replaces the built-in keep function; a keep_function other than 'custom' next
    // to it would be silently ignored.
    TORCH_CHECK(arguments.keep_function == KeepFunction::kCustom,
                "graddrop: keep_probability (f(P)) is given, so keep_function must be 'custom', "
                "got '", keep_function, "' (which would be ignored)");
    arguments.keep_probability =
        checked_purity_shaped(*keep_probability, "keep_probability (f(P))", arguments);
    if (values_checkable_on_host(arguments.keep_probability)) {
      const auto& keep = arguments.keep_probability;
      const bool in_range =
          at::logical_or(at::logical_and(keep >= 0, keep <= 1), at::isnan(keep))
              .all()
              .item<bool>();
      TORCH_CHECK(in_range,
                  "graddrop: keep_probability (f(P), the keep function's values) must lie in "
                  "[0, 1], got values in [",
                  at::nan_to_num(keep).min().item<double>(), ", ",
                  at::nan_to_num(keep).max().item<double>(), "]");
    }
  } else {
    TORCH_CHECK(arguments.keep_function != KeepFunction::kCustom,
                "graddrop: keep_function 'custom' needs keep_probability (f(P)) to be given");
  }
  // The Philox key is 64 bits and the schema's int is signed: a negative seed is the key's two's
  // complement (seed -1 is key 2^64 - 1), so every key is reachable from Python, and the C++
  // API's uint64_t seed reaches the same key.
  if (seed.has_value()) arguments.seed = static_cast<uint64_t>(*seed);
  TORCH_CHECK(offset >= 0, "graddrop: offset must be >= 0, got ", offset);
  TORCH_CHECK(offset == 0 || seed.has_value(), "graddrop: offset (", offset,
              ") is used only with an explicit seed; pass seed too (without one each call draws "
              "a fresh key and the offset would be ignored)");
  arguments.offset = static_cast<uint64_t>(offset);
  return arguments;
}

void check_out(const at::Tensor& out, const at::Tensor& activation) {
  TORCH_CHECK(out.defined(), "graddrop: out is undefined");
  TORCH_CHECK(out.sizes() == activation.sizes(), "graddrop: out has shape ",
              shape_string(out.sizes()), " but the activation has shape ",
              shape_string(activation.sizes()));
  TORCH_CHECK(out.scalar_type() == activation.scalar_type(), "graddrop: out has dtype ",
              out.scalar_type(), " but the activation has dtype ", activation.scalar_type());
  TORCH_CHECK(out.device() == activation.device(), "graddrop: out is on device ", out.device(),
              " but the activation is on ", activation.device());
  TORCH_CHECK(out.is_contiguous() && out.layout() == at::kStrided,
              "graddrop: out must be a contiguous dense tensor");
}

at::Tensor zero_accumulators(const CombineArguments& arguments) {
  if (!arguments.needs_accumulators()) return at::Tensor();
  return at::zeros({accumulator_size(arguments.num_tasks())},
                   arguments.activation.options().dtype(at::kDouble));
}

std::tuple<at::Tensor, at::Tensor> finish_combine(at::Tensor output,
                                                  const at::Tensor& accumulators,
                                                  const CombineArguments& arguments) {
  TORCH_INTERNAL_ASSERT(accumulators.defined() == arguments.needs_accumulators(),
                        "graddrop: a kernel returned accumulators that do not match the options");
  const int64_t n = arguments.num_tasks();
  if (arguments.keep_grad_norm && output.numel() > 0) {
    const auto plain_norm = accumulators[plain_square_slot(n)].sqrt();
    const auto output_norm = accumulators[output_square_slot(n)].sqrt();
    // The ratio is a float64 tensor of one element, not 0-d: a 0-d operand would be cast to the
    // output's dtype first (a ratio of 1e40 becomes inf in float32, and 0 * inf = NaN where
    // float64 gives 0). As a dimensioned operand it makes the product float64, rounded once to
    // the output's dtype, as the float64 reference computes it.
    // (The output is contiguous; its flat view also takes a 0-d output.)
    const auto ratio = (plain_norm / (output_norm + arguments.epsilon)).reshape({1});
    output.view({-1}).mul_(ratio);
  }
  // No statistics: an empty tensor (an undefined one would reach Python as None).
  if (!arguments.statistics) return {output, at::empty({0}, output.options().dtype(at::kDouble))};
  int64_t purity_elements = 1;
  for (auto size : arguments.purity_shape) purity_elements *= size;
  // The kernels skip undefined gradients; the mask of a zero gradient is the zero-sign rule at
  // every element of P.
  if (arguments.zero_sign == ZeroSign::kKeep) {
    for (int64_t task = 0; task < n; ++task) {
      if (!arguments.grads[static_cast<size_t>(task)].defined()) {
        accumulators[task].fill_(static_cast<double>(purity_elements));
      }
    }
  }
  const auto counts = accumulators.narrow(0, 0, n + 2);
  auto statistics = purity_elements > 0 ? counts / static_cast<double>(purity_elements)
                                        : at::zeros_like(counts);
  return {output, statistics};
}

// P in the op-math dtype, composed from ATen operations: used only on the custom keep-function
// path, where f must see the whole P tensor anyway.
at::Tensor purity_composite(const at::Tensor& activation,
                            const c10::List<optional<at::Tensor>>& grads,
                            c10::string_view sign_source, bool marginalize_batch,
                            double epsilon) {
  const auto arguments = prepare_combine(activation, grads, {}, sign_source, marginalize_batch,
                                         "linear", 1.0, "drop", epsilon, false, nullopt, nullopt,
                                         nullopt, 0, false);
  const auto opmath = arguments.opmath_type();
  const auto a = arguments.activation.to(opmath);
  at::Tensor signal_of_activation;
  switch (arguments.sign_source) {
    case SignSource::kActivationSign:
      signal_of_activation = at::sign(a);
      break;
    case SignSource::kActivationValue:
      signal_of_activation = a;
      break;
    default:
      signal_of_activation = at::ones_like(a);
  }
  auto signed_sum = at::zeros(arguments.purity_shape, a.options());
  auto absolute_sum = at::zeros(arguments.purity_shape, a.options());
  for (const auto& grad : arguments.grads) {
    if (!grad.defined()) continue;
    auto signal = signal_of_activation * grad.to(opmath);
    if (marginalize_batch) signal = signal.sum(0);
    signed_sum.add_(signal);
    absolute_sum.add_(signal.abs());
  }
  return 0.5 * (1.0 + signed_sum / (absolute_sum + epsilon));
}

}  // namespace ops
}  // namespace graddrop

TORCH_LIBRARY(graddrop, m) {
  m.def(
      "combine(Tensor activation, Tensor?[] grads, float[] leak=[], "
      "str sign_source='activation_sign', bool marginalize_batch=True, "
      "str keep_function='linear', float scale=1.0, str zero_sign='drop', float epsilon=1e-07, "
      "bool keep_grad_norm=False, Generator? generator=None, Tensor? uniform=None, "
      "Tensor? keep_probability=None, int? seed=None, int offset=0, bool statistics=False, "
      "str? group_name=None) "
      "-> (Tensor, Tensor)");
  // The output written into a given tensor (GradDropFunction's backward hands over a task
  // gradient that nothing else holds, saving a fresh allocation and its page faults).
  m.def(
      "combine_into(Tensor(a!) out, Tensor activation, Tensor?[] grads, float[] leak=[], "
      "str sign_source='activation_sign', bool marginalize_batch=True, "
      "str keep_function='linear', float scale=1.0, str zero_sign='drop', float epsilon=1e-07, "
      "bool keep_grad_norm=False, Generator? generator=None, Tensor? uniform=None, "
      "Tensor? keep_probability=None, int? seed=None, int offset=0, bool statistics=False, "
      "str? group_name=None) -> Tensor");
  m.def(
      "purity(Tensor activation, Tensor?[] grads, str sign_source='activation_sign', "
      "bool marginalize_batch=True, float epsilon=1e-07) -> Tensor",
      &graddrop::ops::purity_composite);
}
