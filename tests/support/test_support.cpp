#include "test_support.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>

#include <torch/version.h>

#include "detail/philox.h"

namespace graddrop {
namespace testing {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* fixed = std::getenv("GRADDROP_TEST_SEED");
    const uint64_t value =
        fixed != nullptr
            ? std::strtoull(fixed, nullptr, 10)
            : static_cast<uint64_t>(
                  std::chrono::high_resolution_clock::now().time_since_epoch().count() % 1000000007);
    std::cout << "[graddrop tests] seed " << value << " (replay with GRADDROP_TEST_SEED=" << value
              << ")" << std::endl;
    return value;
  }();
  return seed;
}

at::Generator seeded_generator(uint64_t salt) {
  const uint64_t seed = test_seed() * 1000003ull + salt;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  if (info != nullptr) {
    std::cout << "[graddrop tests] " << info->test_suite_name() << "." << info->name()
              << " generator seed " << seed << std::endl;
  }
  return at::detail::createCPUGenerator(seed);
}

at::Tensor random_activation(at::IntArrayRef sizes, at::ScalarType dtype,
                             at::Generator& generator) {
  auto values = at::randn(sizes, generator, at::TensorOptions().dtype(at::kDouble));
  // About 5% exact zeros, so sign(A) = 0 and zero signals occur.
  auto zeros = at::rand(sizes, generator, at::TensorOptions().dtype(at::kDouble)) < 0.05;
  return values.masked_fill(zeros, 0.0).to(dtype);
}

std::vector<at::Tensor> random_grads(const at::Tensor& activation, int64_t num_tasks,
                                     at::Generator& generator, int64_t undefined_every) {
  std::vector<at::Tensor> grads;
  for (int64_t task = 0; task < num_tasks; ++task) {
    if (undefined_every > 0 && num_tasks > 1 && task % undefined_every == undefined_every - 1) {
      grads.emplace_back();
      continue;
    }
    grads.push_back(at::randn(activation.sizes(), generator,
                              at::TensorOptions().dtype(at::kDouble))
                        .to(activation.scalar_type()));
  }
  return grads;
}

std::vector<double> mixed_leaks(int64_t num_tasks, at::Generator& generator) {
  auto values = at::rand({num_tasks}, generator, at::TensorOptions().dtype(at::kDouble));
  std::vector<double> leaks(values.data_ptr<double>(), values.data_ptr<double>() + num_tasks);
  for (int64_t task = 0; task < num_tasks; ++task) {
    if (task % 3 == 0) leaks[task] = 0.0;
    if (task % 5 == 4) leaks[task] = 1.0;
  }
  return leaks;
}

std::vector<at::Tensor> decided_signals(std::vector<at::Tensor> grads, const at::Tensor& activation,
                                        const GradDropOptions& options, double margin) {
  if (!options.marginalize_batch() || activation.dim() < 2 || activation.numel() == 0) {
    return grads;
  }
  // The per-element reference's signals are the terms of the marginalised column sums.
  auto per_element = options;
  per_element.marginalize_batch(false);
  const auto any_uniform = at::zeros(activation.sizes(), at::TensorOptions().dtype(at::kFloat));
  const auto terms = reference::combine(grads, activation, per_element, any_uniform).signals;
  const int64_t rows = activation.size(0);
  for (size_t task = 0; task < grads.size(); ++task) {
    if (!grads[task].defined()) continue;
    const auto task_terms = terms[task].reshape({rows, -1});
    const auto sums = task_terms.sum(0);
    const auto undecided = sums.abs() < margin * task_terms.abs().sum(0);
    const auto columns = at::nonzero(undecided).squeeze(1);
    if (columns.numel() == 0) continue;
    const auto largest_row = task_terms.abs().argmax(0);
    const auto largest = task_terms.gather(0, largest_row.unsqueeze(0)).squeeze(0);
    // Tripling a term of the sum's sign adds twice it; negating one of the other sign removes
    // twice it: either way |G_i| grows by 2 |t|, at least 2 / (rows + 2) of the new magnitudes.
    const auto factor =
        at::where((sums * largest) >= 0, at::full_like(sums, 3.0), at::full_like(sums, -1.0));
    // A copy: the caller's tensors stay as they are.
    auto values = grads[task].to(at::kDouble).contiguous().clone().view(-1);
    const auto positions = largest_row.index_select(0, columns) * task_terms.size(1) + columns;
    values.scatter_(0, positions, values.take(positions) * factor.index_select(0, columns));
    grads[task] = values.view(grads[task].sizes()).to(grads[task].scalar_type());
  }
  return grads;
}

at::Tensor separated_uniform(const std::vector<at::Tensor>& grads, const at::Tensor& activation,
                             const GradDropOptions& options, at::Generator& generator,
                             double margin) {
  const auto shape = options.marginalize_batch()
                         ? activation.sizes().slice(1).vec()
                         : activation.sizes().vec();
  auto uniform = at::rand(shape, generator, at::TensorOptions().dtype(at::kFloat));
  // The reference's f(P) does not depend on U: compute it with any U. Clamped to [0, 1]: a U
  // at the clamped value (U = 0 against f(P) < 0) would tie with an explicit keep probability
  // built from it, and moving U off [0, 1]'s ends changes no mask for f(P) outside them.
  const auto keep = reference::combine(grads, activation, options, uniform)
                        .keep_probability.clamp(0.0, 1.0);
  auto draw = uniform.to(at::kDouble);
  const auto too_close = (draw - keep).abs() < margin;
  // Move U to the side of f(P) it was on, `2 * margin` away, flipping side at the ends.
  auto moved = at::where(draw >= keep, keep + 2 * margin, keep - 2 * margin);
  moved = at::where(moved >= 1.0, keep - 2 * margin, moved);
  moved = at::where(moved < 0.0, keep + 2 * margin, moved);
  draw = at::where(too_close, moved, draw).clamp(0.0, 1.0 - 1.0 / 16777216.0);
  return draw.to(at::kFloat);
}

double relative_tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return 1e-10;
    case at::kFloat:
      return 1e-5;
    case at::kHalf:
      return 2e-3;
    default:
      return 1.6e-2;
  }
}

double absolute_tolerance(at::ScalarType dtype) {
  switch (dtype) {
    case at::kDouble:
      return 1e-12;
    case at::kFloat:
      return 1e-5;
    case at::kHalf:
      return 2e-3;
    default:
      return 1.6e-2;
  }
}

::testing::AssertionResult close_to_reference(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "shape " << actual.sizes() << " != " << expected.sizes();
  }
  if (actual.numel() == 0) return ::testing::AssertionSuccess();
  const auto dtype = actual.scalar_type();
  // Expected is rounded to the kernel's dtype first: the kernel's output is, too.
  const auto want = expected.to(dtype).to(at::kDouble).cpu();
  const auto got = actual.to(at::kDouble).cpu();
  const auto both_nan = at::logical_and(at::isnan(got), at::isnan(want));
  const auto error = (got - want).abs();
  const auto bound = absolute_tolerance(dtype) + relative_tolerance(dtype) * want.abs();
  const auto bad = at::logical_and(at::logical_not(both_nan),
                                   at::logical_not(error <= bound));
  const int64_t bad_count = bad.sum().item<int64_t>();
  if (bad_count == 0) return ::testing::AssertionSuccess();
  const auto flat_bad = bad.flatten().nonzero();
  const int64_t first = flat_bad[0][0].item<int64_t>();
  return ::testing::AssertionFailure()
         << bad_count << " of " << actual.numel() << " elements differ (dtype " << dtype
         << "); first at flat index " << first << ": got " << got.flatten()[first].item<double>()
         << ", expected " << want.flatten()[first].item<double>();
}

at::Tensor non_contiguous_copy(const at::Tensor& tensor) {
  if (tensor.dim() >= 2) {
    auto transposed = tensor.transpose(0, tensor.dim() - 1).contiguous();
    auto result = transposed.transpose(0, tensor.dim() - 1);
    if (!result.is_contiguous() || tensor.numel() <= 1) return result;
  }
  // Every other element of a buffer twice as long (also when the transpose above is still
  // contiguous because dims of size 1 do not count).
  auto wide = at::empty({tensor.numel() * 2}, tensor.options());
  std::vector<int64_t> strides(static_cast<size_t>(tensor.dim()));
  int64_t stride = 2;
  for (int64_t d = tensor.dim() - 1; d >= 0; --d) {
    strides[static_cast<size_t>(d)] = stride;
    stride *= std::max<int64_t>(tensor.size(d), 1);
  }
  auto view = wide.as_strided(tensor.sizes(), strides);
  view.copy_(tensor);
  return view;
}

std::string describe(const GradDropOptions& options) {
  std::ostringstream text;
  text << "num_tasks=" << options.num_tasks() << " sign_source=" << to_string(options.sign_source())
       << " marginalize=" << options.marginalize_batch()
       << " keep=" << to_string(options.keep_function()) << " scale=" << options.scale()
       << " zero=" << to_string(options.zero_sign()) << " keep_grad_norm=" << options.keep_grad_norm();
  return text.str();
}

::testing::AssertionResult throws_error_containing(const std::function<void()>& statement,
                                                   const std::vector<std::string>& parts) {
  std::string message;
  try {
    statement();
    return ::testing::AssertionFailure() << "no c10::Error was thrown";
  } catch (const c10::Error& error) {
    message = error.what_without_backtrace();
  }
  for (const auto& part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "the message does not contain \"" << part << "\": " << message;
    }
  }
  return ::testing::AssertionSuccess() << message;
}

::testing::AssertionResult bitwise_equal(const at::Tensor& actual, const at::Tensor& expected) {
  if (actual.defined() != expected.defined()) {
    return ::testing::AssertionFailure() << "one tensor is undefined";
  }
  if (!actual.defined()) return ::testing::AssertionSuccess();
  if (actual.scalar_type() != expected.scalar_type() || actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure() << "dtype/shape " << actual.scalar_type() << " "
                                         << actual.sizes() << " != " << expected.scalar_type()
                                         << " " << expected.sizes();
  }
  const auto a = actual.cpu().contiguous();
  const auto b = expected.cpu().contiguous();
  const auto bytes = static_cast<size_t>(a.numel()) * a.element_size();
  if (bytes == 0 || std::memcmp(a.data_ptr(), b.data_ptr(), bytes) == 0) {
    return ::testing::AssertionSuccess();
  }
  const auto differ = at::logical_not(at::eq(a.to(at::kDouble), b.to(at::kDouble))).flatten();
  const int64_t count = differ.sum().item<int64_t>();
  return ::testing::AssertionFailure() << count << " of " << a.numel()
                                       << " elements differ in their bits";
}

at::Tensor philox_uniform_tensor(at::IntArrayRef shape, uint64_t seed, uint64_t offset) {
  auto uniform = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  float* data = uniform.data_ptr<float>();
  for (int64_t k = 0; k < uniform.numel(); ++k) {
    data[k] = detail::philox_uniform(seed, offset, static_cast<uint64_t>(k));
  }
  return uniform;
}

GradDropStatistics statistics_of_reference(const reference::ReferenceResult& result) {
  GradDropStatistics statistics;
  statistics.purity_elements = result.purity.numel();
  const double elements = static_cast<double>(statistics.purity_elements);
  for (const auto& mask : result.masks) {
    statistics.kept_fraction.push_back(
        elements > 0 ? mask.to(at::kDouble).sum().item<double>() / elements : 0.0);
  }
  if (elements > 0) {
    statistics.mean_purity = result.purity.sum().item<double>() / elements;
    auto any_positive = at::zeros(result.purity.sizes(), at::kBool);
    auto any_negative = at::zeros(result.purity.sizes(), at::kBool);
    for (const auto& signal : result.signals) {
      any_positive = at::logical_or(any_positive, signal > 0);
      any_negative = at::logical_or(any_negative, signal < 0);
    }
    statistics.conflict_fraction =
        at::logical_and(any_positive, any_negative).to(at::kDouble).sum().item<double>() /
        elements;
  }
  return statistics;
}

::testing::AssertionResult statistics_equal(const GradDropStatistics& actual,
                                            const GradDropStatistics& expected,
                                            double purity_tolerance) {
  // Fractions are counts over the same number of elements: equal up to double rounding.
  const double count_tolerance = 1e-12;
  bool same = actual.purity_elements == expected.purity_elements &&
              actual.kept_fraction.size() == expected.kept_fraction.size() &&
              std::abs(actual.mean_purity - expected.mean_purity) <= purity_tolerance &&
              std::abs(actual.conflict_fraction - expected.conflict_fraction) <= count_tolerance;
  for (size_t task = 0; same && task < actual.kept_fraction.size(); ++task) {
    same = std::abs(actual.kept_fraction[task] - expected.kept_fraction[task]) <= count_tolerance;
  }
  if (same) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "got " << actual << ", expected " << expected;
}

#if TORCH_VERSION_MAJOR >= 2
struct WarningCapture::Handler : c10::WarningHandler {
  std::vector<std::string> messages;
  void process(const c10::Warning& warning) override { messages.push_back(warning.msg()); }
};
namespace warning_api = c10::WarningUtils;
#else
struct WarningCapture::Handler : c10::WarningHandler {
  std::vector<std::string> messages;
  void process(const c10::SourceLocation&, const std::string& message, const bool) override {
    messages.push_back(message);
  }
};
namespace warning_api = c10::Warning;
#endif

WarningCapture::WarningCapture()
    : handler_(new Handler()), previous_(warning_api::get_warning_handler()) {
  warning_api::set_warning_handler(handler_);
}

WarningCapture::~WarningCapture() {
  warning_api::set_warning_handler(previous_);
  delete handler_;
}

const std::vector<std::string>& WarningCapture::messages() const { return handler_->messages; }

int64_t WarningCapture::count_containing(const std::string& text) const {
  int64_t count = 0;
  for (const auto& message : handler_->messages) count += message.find(text) != std::string::npos;
  return count;
}

}  // namespace testing
}  // namespace graddrop
