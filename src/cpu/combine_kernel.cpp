// CPU implementation of graddrop::combine: one pass over contiguous data using the shared math
// of include/graddrop/detail/math.h and the Philox draw of detail/philox.h.
//
// Work is split into fixed-size tiles (of Philox groups, or of rows/columns), each tile writes
// its own partial accumulators, and partials are reduced in tile order: results, statistics and
// keep_grad_norm's norms do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "graddrop/detail/math.h"
#include "graddrop/detail/philox.h"
#include "ops/combine_op.h"

namespace graddrop {
namespace {

using ops::CombineArguments;

// Elements per tile in per-element mode (a multiple of the Philox group of 4).
constexpr int64_t kElementTile = 16384;
// Columns per tile of the marginalised reduction, rows per tile of its apply pass.
constexpr int64_t kColumnTile = 256;
constexpr int64_t kRowTile = 64;

struct PhiloxKey {
  uint64_t seed;
  uint64_t offset;
};

// The (seed, offset) of this call: explicit, or a fresh seed from the CPU generator.
PhiloxKey draw_key(const CombineArguments& arguments, const optional<at::Generator>& generator) {
  if (arguments.seed.has_value()) return {*arguments.seed, arguments.offset};
  auto* cpu_generator = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(cpu_generator->mutex_);
  return {cpu_generator->random64(), 0};
}

// Where U comes from: an explicit tensor or Philox.
template <typename opmath_t>
struct UniformSource {
  const opmath_t* explicit_values;  // null: draw from Philox
  PhiloxKey key;

  // U for logical indices [4 * group, 4 * group + count), count <= 4.
  void group(int64_t group_index, int64_t count, opmath_t out[4]) const {
    if (explicit_values != nullptr) {
      for (int64_t j = 0; j < count; ++j) out[j] = explicit_values[4 * group_index + j];
      return;
    }
    const auto words = detail::philox_group(key.seed, key.offset, static_cast<uint64_t>(group_index));
    for (int j = 0; j < 4; ++j) out[j] = static_cast<opmath_t>(detail::uniform_from_word(words.w[j]));
  }
  opmath_t at(int64_t k) const {
    if (explicit_values != nullptr) return explicit_values[k];
    return static_cast<opmath_t>(detail::philox_uniform(key.seed, key.offset, static_cast<uint64_t>(k)));
  }
};

// Per-tile accumulators, laid out as in ops::accumulator_size.
struct TileAccumulators {
  std::vector<double> values;
  int64_t stride;
  TileAccumulators(int64_t tiles, int64_t num_tasks)
      : values(static_cast<size_t>(tiles * ops::accumulator_size(num_tasks)), 0.0),
        stride(ops::accumulator_size(num_tasks)) {}
  double* tile(int64_t index) { return values.data() + index * stride; }
  void reduce_into(double* total, int64_t tiles) const {
    for (int64_t t = 0; t < tiles; ++t) {
      for (int64_t s = 0; s < stride; ++s) total[s] += values[static_cast<size_t>(t * stride + s)];
    }
  }
};

template <typename scalar_t, typename opmath_t>
struct Inputs {
  const scalar_t* activation;
  std::vector<const scalar_t*> grads;  // null for an undefined (zero) gradient
  std::vector<opmath_t> leak;
  const opmath_t* keep_probability;  // null: compute f(P)
};

template <typename scalar_t, typename opmath_t>
Inputs<scalar_t, opmath_t> inputs_of(const CombineArguments& arguments) {
  Inputs<scalar_t, opmath_t> inputs;
  inputs.activation = arguments.activation.data_ptr<scalar_t>();
  for (size_t task = 0; task < arguments.grads.size(); ++task) {
    const auto& grad = arguments.grads[task];
    inputs.grads.push_back(grad.defined() ? grad.data_ptr<scalar_t>() : nullptr);
    inputs.leak.push_back(static_cast<opmath_t>(arguments.leak[task]));
  }
  inputs.keep_probability = arguments.keep_probability.defined()
                                ? arguments.keep_probability.data_ptr<opmath_t>()
                                : nullptr;
  return inputs;
}

// Per-purity-element work shared by both modes: from the task signals G_i, computes P, f(P)
// and the coefficients c_i, and records the statistics.
template <typename opmath_t>
struct PurityElement {
  const CombineArguments& arguments;

  void coefficients(const opmath_t* signals, opmath_t uniform, const opmath_t* explicit_keep,
                    const std::vector<opmath_t>& leak, opmath_t* coefficient,
                    double* accumulators) const {
    const int64_t n = arguments.num_tasks();
    opmath_t signed_sum = 0, absolute_sum = 0;
    bool any_positive = false, any_negative = false;
    for (int64_t i = 0; i < n; ++i) {
      signed_sum += signals[i];
      absolute_sum += std::abs(signals[i]);
      any_positive |= signals[i] > 0;
      any_negative |= signals[i] < 0;
    }
    const opmath_t purity = detail::purity(signed_sum, absolute_sum,
                                           static_cast<opmath_t>(arguments.epsilon));
    const opmath_t keep =
        explicit_keep != nullptr
            ? *explicit_keep
            : detail::keep_probability(purity, arguments.keep_function,
                                       static_cast<opmath_t>(arguments.scale));
    for (int64_t i = 0; i < n; ++i) {
      coefficient[i] =
          detail::task_coefficient(signals[i], keep, uniform, leak[i], arguments.zero_sign);
    }
    if (accumulators != nullptr) {
      for (int64_t i = 0; i < n; ++i) {
        accumulators[i] += detail::sign_mask(signals[i], keep, uniform, arguments.zero_sign);
      }
      accumulators[ops::purity_sum_slot(n)] += purity;
      accumulators[ops::conflict_slot(n)] += (any_positive && any_negative);
    }
  }
};

template <typename scalar_t, typename opmath_t>
void combine_per_element(const CombineArguments& arguments, const UniformSource<opmath_t>& draw,
                         scalar_t* output, double* totals) {
  const auto inputs = inputs_of<scalar_t, opmath_t>(arguments);
  const int64_t n = arguments.num_tasks();
  const int64_t numel = arguments.columns;
  const int64_t tiles = (numel + kElementTile - 1) / kElementTile;
  const bool accumulate = totals != nullptr;
  TileAccumulators partials(accumulate ? tiles : 0, n);
  const PurityElement<opmath_t> element{arguments};

  at::parallel_for(0, tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<opmath_t> signals(n), grads(n), coefficient(n);
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      double* accumulators = accumulate ? partials.tile(tile) : nullptr;
      const int64_t begin = tile * kElementTile;
      const int64_t end = std::min(numel, begin + kElementTile);
      for (int64_t group = begin / 4; group * 4 < end; ++group) {
        const int64_t group_end = std::min(end, group * 4 + 4);
        opmath_t uniform[4];
        draw.group(group, group_end - group * 4, uniform);
        for (int64_t k = group * 4; k < group_end; ++k) {
          const opmath_t signal_of_activation = detail::sign_signal(
              static_cast<opmath_t>(inputs.activation[k]), arguments.sign_source);
          opmath_t plain_sum = 0;
          for (int64_t i = 0; i < n; ++i) {
            grads[i] = inputs.grads[i] ? static_cast<opmath_t>(inputs.grads[i][k]) : opmath_t(0);
            signals[i] = signal_of_activation * grads[i];
            plain_sum += grads[i];
          }
          const opmath_t* keep = inputs.keep_probability ? inputs.keep_probability + k : nullptr;
          element.coefficients(signals.data(), uniform[k - group * 4], keep, inputs.leak,
                               coefficient.data(), accumulators);
          opmath_t combined = 0;
          for (int64_t i = 0; i < n; ++i) combined += coefficient[i] * grads[i];
          output[k] = static_cast<scalar_t>(combined);
          if (accumulate) {
            accumulators[ops::output_square_slot(n)] += double(combined) * double(combined);
            accumulators[ops::plain_square_slot(n)] += double(plain_sum) * double(plain_sum);
          }
        }
      }
    }
  });
  if (accumulate) partials.reduce_into(totals, tiles);
}

template <typename scalar_t, typename opmath_t>
void combine_marginalized(const CombineArguments& arguments, const UniformSource<opmath_t>& draw,
                          scalar_t* output, double* totals) {
  const auto inputs = inputs_of<scalar_t, opmath_t>(arguments);
  const int64_t n = arguments.num_tasks();
  const int64_t rows = arguments.rows;
  const int64_t columns = arguments.columns;
  const bool accumulate = totals != nullptr;
  const PurityElement<opmath_t> element{arguments};

  // Pass 1: per column, the task signals summed over the batch (rows in order), then P, U and
  // the coefficients c_i[column], laid out [column][task].
  std::vector<opmath_t> coefficients(static_cast<size_t>(columns * n));
  const int64_t column_tiles = (columns + kColumnTile - 1) / kColumnTile;
  TileAccumulators column_partials(accumulate ? column_tiles : 0, n);
  at::parallel_for(0, column_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    std::vector<opmath_t> sums(static_cast<size_t>(kColumnTile * n));
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      const int64_t begin = tile * kColumnTile;
      const int64_t width = std::min(columns, begin + kColumnTile) - begin;
      std::fill(sums.begin(), sums.end(), opmath_t(0));
      for (int64_t row = 0; row < rows; ++row) {
        const int64_t base = row * columns + begin;
        for (int64_t c = 0; c < width; ++c) {
          const opmath_t signal_of_activation = detail::sign_signal(
              static_cast<opmath_t>(inputs.activation[base + c]), arguments.sign_source);
          for (int64_t i = 0; i < n; ++i) {
            if (inputs.grads[i] == nullptr) continue;
            sums[c * n + i] += signal_of_activation * static_cast<opmath_t>(inputs.grads[i][base + c]);
          }
        }
      }
      double* accumulators = accumulate ? column_partials.tile(tile) : nullptr;
      for (int64_t c = 0; c < width; ++c) {
        const int64_t column = begin + c;
        const opmath_t* keep =
            inputs.keep_probability ? inputs.keep_probability + column : nullptr;
        element.coefficients(&sums[c * n], draw.at(column), keep, inputs.leak,
                             &coefficients[column * n], accumulators);
      }
    }
  });

  // Pass 2: out[row, column] = sum_i c_i[column] * g_i[row, column].
  const int64_t row_tiles = (rows + kRowTile - 1) / kRowTile;
  TileAccumulators row_partials(accumulate ? row_tiles : 0, n);
  at::parallel_for(0, row_tiles, 1, [&](int64_t tile_begin, int64_t tile_end) {
    for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
      double* accumulators = accumulate ? row_partials.tile(tile) : nullptr;
      for (int64_t row = tile * kRowTile; row < std::min(rows, (tile + 1) * kRowTile); ++row) {
        for (int64_t column = 0; column < columns; ++column) {
          const int64_t index = row * columns + column;
          opmath_t combined = 0, plain_sum = 0;
          for (int64_t i = 0; i < n; ++i) {
            if (inputs.grads[i] == nullptr) continue;
            const auto grad = static_cast<opmath_t>(inputs.grads[i][index]);
            combined += coefficients[column * n + i] * grad;
            plain_sum += grad;
          }
          output[index] = static_cast<scalar_t>(combined);
          if (accumulate) {
            accumulators[ops::output_square_slot(n)] += double(combined) * double(combined);
            accumulators[ops::plain_square_slot(n)] += double(plain_sum) * double(plain_sum);
          }
        }
      }
    }
  });
  if (accumulate) {
    column_partials.reduce_into(totals, column_tiles);
    row_partials.reduce_into(totals, row_tiles);
  }
}

std::tuple<at::Tensor, at::Tensor> combine_cpu(
    const at::Tensor& activation, const c10::List<optional<at::Tensor>>& grads,
    c10::ArrayRef<double> leak, c10::string_view sign_source, bool marginalize_batch,
    c10::string_view keep_function, double scale, c10::string_view zero_sign, double epsilon,
    bool keep_grad_norm, optional<at::Generator> generator, const optional<at::Tensor>& uniform,
    const optional<at::Tensor>& keep_probability, optional<int64_t> seed, int64_t offset,
    bool statistics) {
  const auto arguments = ops::prepare_combine(
      activation, grads, leak, sign_source, marginalize_batch, keep_function, scale, zero_sign,
      epsilon, keep_grad_norm, uniform, keep_probability, seed, offset, statistics);
  auto output = at::empty_like(arguments.activation);
  auto accumulators = at::zeros({ops::accumulator_size(arguments.num_tasks())},
                                arguments.activation.options().dtype(at::kDouble));
  double* totals = arguments.needs_accumulators() ? accumulators.data_ptr<double>() : nullptr;
  // An explicit U needs no generator; otherwise draw the key even for empty tensors, so the
  // generator advances the same way whatever the shape.
  const PhiloxKey key = arguments.uniform.defined() ? PhiloxKey{0, 0} : draw_key(arguments, generator);

  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, arguments.activation.scalar_type(), "combine_cpu", [&] {
        using opmath_t = at::opmath_type<scalar_t>;
        const UniformSource<opmath_t> draw{
            arguments.uniform.defined() ? arguments.uniform.data_ptr<opmath_t>() : nullptr, key};
        if (arguments.marginalize_batch) {
          if (arguments.columns > 0) {
            combine_marginalized<scalar_t, opmath_t>(arguments, draw,
                                                     output.data_ptr<scalar_t>(), totals);
          }
        } else if (arguments.columns > 0) {
          combine_per_element<scalar_t, opmath_t>(arguments, draw, output.data_ptr<scalar_t>(),
                                                  totals);
        }
      });
  return ops::finish_combine(output, accumulators, arguments);
}

}  // namespace
}  // namespace graddrop

TORCH_LIBRARY_IMPL(graddrop, CPU, m) {
  m.impl("combine", TORCH_FN(graddrop::combine_cpu));
}
