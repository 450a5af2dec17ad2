#include "graddrop/options.h"

#include <cmath>

#include <c10/util/Exception.h>

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
  TORCH_CHECK(num_tasks_ >= 1, "GradDropOptions: num_tasks must be >= 1, got ", num_tasks_);
  TORCH_CHECK(leak_.empty() || static_cast<int64_t>(leak_.size()) == num_tasks_,
              "GradDropOptions: leak must hold num_tasks (", num_tasks_, ") values, got ",
              leak_.size());
  for (size_t task = 0; task < leak_.size(); ++task) {
    TORCH_CHECK(leak_[task] >= 0.0 && leak_[task] <= 1.0, "GradDropOptions: leak[", task,
                "] must be in [0, 1], got ", leak_[task]);
  }
  TORCH_CHECK(std::isfinite(epsilon_) && epsilon_ > 0.0,
              "GradDropOptions: epsilon must be a finite number > 0, got ", epsilon_);
  TORCH_CHECK(std::isfinite(scale_) && scale_ > 0.0,
              "GradDropOptions: scale must be a finite number > 0, got ", scale_);
  TORCH_CHECK(keep_function_ != KeepFunction::kCustom || custom_keep_function_,
              "GradDropOptions: keep_function is custom but no custom_keep_function was given");
  const auto source = static_cast<int32_t>(sign_source_);
  TORCH_CHECK(source >= 0 && source <= 2, "GradDropOptions: unknown sign_source ", source);
  const auto function = static_cast<int32_t>(keep_function_);
  TORCH_CHECK(function >= 0 && function <= 2, "GradDropOptions: unknown keep_function ", function);
  const auto zero = static_cast<int32_t>(zero_sign_);
  TORCH_CHECK(zero == 0 || zero == 1, "GradDropOptions: unknown zero_sign ", zero);
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
  return zero_sign == ZeroSign::kKeep ? "keep" : "drop";
}

SignSource sign_source_from_string(const std::string& name) {
  if (name == "activation_sign") return SignSource::kActivationSign;
  if (name == "activation_value") return SignSource::kActivationValue;
  if (name == "none") return SignSource::kNone;
  TORCH_CHECK(false, "sign_source must be 'activation_sign', 'activation_value' or 'none', got '",
              name, "'");
}

KeepFunction keep_function_from_string(const std::string& name) {
  if (name == "linear") return KeepFunction::kLinear;
  if (name == "sigmoid") return KeepFunction::kSigmoid;
  if (name == "custom") return KeepFunction::kCustom;
  TORCH_CHECK(false, "keep_function must be 'linear', 'sigmoid' or 'custom', got '", name, "'");
}

ZeroSign zero_sign_from_string(const std::string& name) {
  if (name == "drop") return ZeroSign::kDrop;
  if (name == "keep") return ZeroSign::kKeep;
  TORCH_CHECK(false, "zero_sign must be 'drop' or 'keep', got '", name, "'");
}

}  // namespace graddrop
