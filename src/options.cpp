#include "graddrop/options.h"

#include <cmath>

#include <c10/util/Exception.h>

#include "ops/validation.h"

namespace graddrop {

GradDropOptions::GradDropOptions(int64_t num_tasks) : num_tasks_(num_tasks) {}

GradDropOptions& GradDropOptions::custom_keep_function(KeepCallable function) {
  custom_keep_function_ = std::move(function);
  keep_function_ = KeepFunction::kCustom;
  return *this;
}

double GradDropOptions::leak_of(int64_t task) const {
  return leak_.empty() ? 0.0 : leak_.at(static_cast<size_t>(task));
}

void GradDropOptions::validate() const {
  ops::check_num_tasks(num_tasks_);
  ops::check_leak(leak_, num_tasks_);
  ops::check_epsilon(epsilon_);
  ops::check_scale(scale_);
  TORCH_CHECK_VALUE(keep_function_ != KeepFunction::kCustom || custom_keep_function_,
                    "graddrop: keep_function is custom but no custom_keep_function was given");
  // The operator takes the enums by name (to_string): a value outside the enum has none.
  TORCH_CHECK_VALUE(to_string(sign_source_) != "unknown", "graddrop: sign_source must be a ",
                    "SignSource, got the value ", static_cast<int32_t>(sign_source_));
  TORCH_CHECK_VALUE(to_string(keep_function_) != "unknown", "graddrop: keep_function must be a ",
                    "KeepFunction, got the value ", static_cast<int32_t>(keep_function_));
  TORCH_CHECK_VALUE(to_string(zero_sign_) != "unknown", "graddrop: zero_sign must be a ",
                    "ZeroSign, got the value ", static_cast<int32_t>(zero_sign_));
}

std::string to_string(SignSource source) {
  switch (source) {
    case SignSource::kActivationSign:
      return "activation_sign";
    case SignSource::kActivationValue:
      return "activation_value";
    case SignSource::kNone:
      return "none";
  }
  return "unknown";
}

std::string to_string(KeepFunction function) {
  switch (function) {
    case KeepFunction::kLinear:
      return "linear";
    case KeepFunction::kSigmoid:
      return "sigmoid";
    case KeepFunction::kCustom:
      return "custom";
  }
  return "unknown";
}

std::string to_string(ZeroSign zero_sign) {
  switch (zero_sign) {
    case ZeroSign::kDrop:
      return "drop";
    case ZeroSign::kKeep:
      return "keep";
  }
  return "unknown";
}

SignSource sign_source_from_string(const std::string& name) {
  return ops::parse_sign_source(name);
}

KeepFunction keep_function_from_string(const std::string& name) {
  return ops::parse_keep_function(name);
}

ZeroSign zero_sign_from_string(const std::string& name) { return ops::parse_zero_sign(name); }

}  // namespace graddrop
