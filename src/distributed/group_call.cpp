// The exchanges of one combine call with the other ranks of a c10d process group
// (group_call.h), and the registration of groups given to the C++ API (registry.h). Only c10d's
// ProcessGroup and its registry are used: no backend header, so any backend (Gloo, NCCL, ...)
// serves.
#include "distributed/group_call.h"

#include <mutex>
#include <sstream>
#include <unordered_map>
#include <vector>

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "distributed/registry.h"
#include "graddrop/options.h"

#if GRADDROP_HAS_DISTRIBUTED
#include <torch/csrc/distributed/c10d/GroupRegistry.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

namespace graddrop {
namespace distributed {

void materialise_zero_grads(ops::CombineArguments& arguments) {
  for (auto& grad : arguments.grads) {
    if (!grad.defined()) grad = at::zeros_like(arguments.activation);
  }
}

#if GRADDROP_HAS_DISTRIBUTED

namespace {

std::string shape_string(at::IntArrayRef sizes) {
  std::ostringstream text;
  text << sizes;
  return text.str();
}

// The call description every rank sends in agree(): int64 slots.
enum Slot : int64_t {
  kMagic,  // tells a graddrop description from another collective's data
  kTasks,
  kDtype,
  kMarginalize,
  kKeepGradNorm,
  kSignSource,
  kKeepFunction,
  kZeroSign,
  kRows,  // the local batch: may differ between ranks
  kFeatureDims,
  kFirstFeatureDim,
  kSeed = kFirstFeatureDim + 8,  // each rank's own key; rank 0's is used
  kOffset,
  kSlots,
};
constexpr int64_t kMagicValue = 0x67726470;  // "grdp"
constexpr int64_t kMaxFeatureDims = kSeed - kFirstFeatureDim;

std::vector<int64_t> feature_shape(const ops::CombineArguments& arguments) {
  // Everything but the batch dimension, which may differ between ranks.
  const auto sizes = arguments.activation.sizes();
  return std::vector<int64_t>(sizes.begin() + (sizes.empty() ? 0 : 1), sizes.end());
}

std::string describe(const int64_t* slots) {
  std::ostringstream text;
  if (slots[kMagic] != kMagicValue) return "no graddrop call (another collective's data)";
  text << slots[kTasks] << " tasks, " << static_cast<at::ScalarType>(slots[kDtype]) << ", "
       << (slots[kMarginalize] ? "marginalised" : "per element") << ", features [";
  for (int64_t d = 0; d < slots[kFeatureDims] && d < kMaxFeatureDims; ++d) {
    text << (d ? ", " : "") << slots[kFirstFeatureDim + d];
  }
  text << "], sign_source " << to_string(static_cast<SignSource>(slots[kSignSource]))
       << ", keep_function " << to_string(static_cast<KeepFunction>(slots[kKeepFunction]))
       << ", zero_sign " << to_string(static_cast<ZeroSign>(slots[kZeroSign]))
       << ", keep_grad_norm " << (slots[kKeepGradNorm] ? "on" : "off");
  return text.str();
}

// The slots every rank must agree on: all but the batch size and the key.
bool agreed_slot(int64_t slot) { return slot < kRows || (slot >= kFeatureDims && slot < kSeed); }

bool same_call(const int64_t* a, const int64_t* b) {
  for (int64_t slot = 0; slot < kSeed; ++slot) {
    if (agreed_slot(slot) && a[slot] != b[slot]) return false;
  }
  return true;
}

// FNV-1a over the agreed slots: what the steady-state all-reduce compares.
uint64_t call_hash(const int64_t* slots) {
  uint64_t hash = 14695981039346656037ull;
  for (int64_t slot = 0; slot < kSeed; ++slot) {
    if (!agreed_slot(slot)) continue;
    const auto value = static_cast<uint64_t>(slots[slot]);
    for (int byte = 0; byte < 8; ++byte) {
      hash ^= (value >> (8 * byte)) & 0xffu;
      hash *= 1099511628211ull;
    }
  }
  return hash;
}

// The check slots after the column sums in the steady-state all-reduce. Every value is a small
// integer, exact in float32 summed over up to 2^24 / 225 ranks:
//   [0]            1 if this rank's sums have the agreed size and dtype, else 0 (sum = ranks?)
//   [1, 33)        the call hash in 4-bit pieces p and their squares p^2: every rank has the
//                  same hash exactly when sum p = ranks * p and sum p^2 = ranks * p^2 hold on
//                  every rank (zero variance), so every rank reaches the same verdict
//   [33, 41)       rank 0's seed and offset in 16-bit pieces (0 from the other ranks)
constexpr int64_t kHashPieces = 16;
constexpr int64_t kKeyPieces = 8;
constexpr int64_t kCheckSlots = 1 + 2 * kHashPieces + kKeyPieces;

// What the ranks of a group last agreed on (the size and dtype of the steady-state all-reduce),
// per group name in this process. Every rank updates it at the same calls, from agreed values.
// It holds the group weakly: a new group under an old name (a re-initialised default group)
// starts with the full exchange on every rank.
struct Agreement {
  int64_t sums_size = 0;
  at::ScalarType dtype = at::kFloat;
  c10::weak_intrusive_ptr<c10d::ProcessGroup> group{c10::intrusive_ptr<c10d::ProcessGroup>()};
};
std::mutex agreements_mutex;
std::unordered_map<std::string, Agreement>& agreements() {
  static std::unordered_map<std::string, Agreement> map;
  return map;
}

}  // namespace

struct GroupCall::State {
  std::string name;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  at::Tensor activation;
  const ops::CombineArguments* arguments = nullptr;

  // Where the failure happened, for the message: group, backend, rank, shape.
  std::string context(const char* step) const {
    std::ostringstream text;
    text << "graddrop: process group '" << name << "' (" << group->getBackendName() << ", rank "
         << group->getRank() << " of " << group->getSize() << ") failed while " << step
         << " for an activation of shape " << shape_string(activation.sizes());
    return text.str();
  }

  void wait(const c10::intrusive_ptr<c10d::Work>& work, const char* step) const {
    try {
      work->wait();
    } catch (const c10::Error& error) {
      TORCH_CHECK(false, context(step), ": ", error.what_without_backtrace(),
                  "\nEvery rank of the group must call combine (the GradDrop layer's backward) at "
                  "the same point of its step: a rank that skipped it leaves the others waiting "
                  "until the group's timeout.");
    } catch (const std::exception& error) {
      TORCH_CHECK(false, context(step), ": ", error.what(),
                  "\nEvery rank of the group must call combine (the GradDrop layer's backward) at "
                  "the same point of its step: a rank that skipped it leaves the others waiting "
                  "until the group's timeout.");
    }
  }
};

GroupCall::GroupCall(const std::string& group_name, const ops::CombineArguments& arguments)
    : state_(std::make_unique<State>()) {
  state_->name = group_name;
  try {
    state_->group = c10d::resolve_process_group(group_name);
  } catch (const c10::Error& error) {
    TORCH_CHECK(false, "graddrop: group_name '", group_name,
                "' names no process group in c10d's registry (",
                error.what_without_backtrace(),
                "); from Python pass group.group_name of a torch.distributed group, from C++ set "
                "GradDropOptions::process_group");
  }
  state_->activation = arguments.activation;
  state_->arguments = &arguments;
}

GroupCall::~GroupCall() = default;

int GroupCall::rank() const { return state_->group->getRank(); }
int GroupCall::size() const { return state_->group->getSize(); }

void GroupCall::describe_into(std::vector<int64_t>& slots, CallKey local_key) const {
  const auto& arguments = *state_->arguments;
  // Refusing a shape here would leave the other ranks waiting: more than kMaxFeatureDims
  // feature dimensions are described with the trailing ones multiplied into the last slot.
  auto features = feature_shape(arguments);
  while (static_cast<int64_t>(features.size()) > kMaxFeatureDims) {
    const int64_t last = features.back();
    features.pop_back();
    features.back() *= last;
  }
  slots[kMagic] = kMagicValue;
  slots[kTasks] = arguments.num_tasks();
  slots[kDtype] = static_cast<int64_t>(arguments.activation.scalar_type());
  slots[kMarginalize] = arguments.marginalize_batch;
  slots[kKeepGradNorm] = arguments.keep_grad_norm;
  slots[kSignSource] = static_cast<int64_t>(arguments.sign_source);
  slots[kKeepFunction] = static_cast<int64_t>(arguments.keep_function);
  slots[kZeroSign] = static_cast<int64_t>(arguments.zero_sign);
  slots[kRows] = arguments.rows;
  slots[kFeatureDims] = static_cast<int64_t>(features.size());
  for (size_t d = 0; d < features.size(); ++d) slots[kFirstFeatureDim + d] = features[d];
  slots[kSeed] = static_cast<int64_t>(local_key.seed);
  slots[kOffset] = static_cast<int64_t>(local_key.offset);
}

CallKey GroupCall::agree(CallKey local_key) {
  const auto& arguments = *state_->arguments;
  std::vector<int64_t> slots(kSlots, 0);
  describe_into(slots, local_key);
  const auto device = state_->activation.device();
  const auto on_device = at::TensorOptions().dtype(at::kLong).device(device);
  std::vector<at::Tensor> inputs{at::tensor(slots, at::kLong).to(device)};
  std::vector<std::vector<at::Tensor>> outputs(1);
  for (int r = 0; r < size(); ++r) outputs[0].push_back(at::empty({kSlots}, on_device));
  state_->wait(state_->group->allgather(outputs, inputs), "exchanging the call descriptions");

  const auto all = at::stack(outputs[0]).cpu().contiguous();
  const int64_t* base = all.data_ptr<int64_t>();
  for (int r = 0; r < size(); ++r) {
    if (same_call(base + r * kSlots, slots.data())) continue;
    std::ostringstream ranks;
    for (int q = 0; q < size(); ++q) {
      ranks << "\n  rank " << q << ": " << describe(base + q * kSlots)
            << (q == rank() ? "  (this rank)" : "");
    }
    TORCH_CHECK(false, "graddrop: the ranks of process group '", state_->name,
                "' called combine with different shapes or options (the activation here has "
                "shape ",
                shape_string(arguments.activation.sizes()), "):", ranks.str(),
                "\nOnly the batch size may differ between ranks.");
  }
  return {static_cast<uint64_t>(base[kSeed]), static_cast<uint64_t>(base[kOffset])};
}

CallKey GroupCall::exchange(CallKey local_key, const at::Tensor& column_sums) {
  const auto& arguments = *state_->arguments;
  const int64_t sums_size = column_sums.defined() ? column_sums.numel() : 0;
  const auto dtype = arguments.opmath_type();
  optional<Agreement> agreed;
  {
    std::lock_guard<std::mutex> lock(agreements_mutex);
    const auto found = agreements().find(state_->name);
    if (found != agreements().end() && found->second.group.lock().get() == state_->group.get()) {
      agreed = found->second;
    }
  }
  if (agreed.has_value()) {
    // The steady state: one all-reduce of the sums and the check slots, of the agreed size.
    const bool fits = sums_size == agreed->sums_size && dtype == agreed->dtype;
    auto buffer = at::zeros({agreed->sums_size + kCheckSlots},
                            state_->activation.options().dtype(agreed->dtype));
    if (fits && sums_size > 0) buffer.narrow(0, 0, sums_size).copy_(column_sums.view({-1}));
    std::vector<int64_t> slots(kSlots, 0);
    describe_into(slots, local_key);
    const uint64_t hash = call_hash(slots.data());
    std::vector<double> checks(kCheckSlots, 0.0);
    checks[0] = fits ? 1.0 : 0.0;
    for (int64_t piece = 0; piece < kHashPieces; ++piece) {
      const double value = static_cast<double>((hash >> (4 * piece)) & 0xfu);
      checks[1 + piece] = value;
      checks[1 + kHashPieces + piece] = value * value;
    }
    if (rank() == 0) {
      for (int64_t piece = 0; piece < 4; ++piece) {
        checks[1 + 2 * kHashPieces + piece] =
            static_cast<double>((local_key.seed >> (16 * piece)) & 0xffffu);
        checks[1 + 2 * kHashPieces + 4 + piece] =
            static_cast<double>((local_key.offset >> (16 * piece)) & 0xffffu);
      }
    }
    buffer.narrow(0, agreed->sums_size, kCheckSlots)
        .copy_(at::tensor(checks, at::kDouble).to(buffer.options()));
    sum(buffer, "summing the column sums of the task signals");
    const auto reduced =
        buffer.narrow(0, agreed->sums_size, kCheckSlots).to(at::kCPU, at::kDouble).contiguous();
    const double* total = reduced.data_ptr<double>();
    const double ranks = static_cast<double>(size());
    bool same = total[0] == ranks;
    for (int64_t piece = 0; piece < kHashPieces; ++piece) {
      same = same && total[1 + piece] == ranks * checks[1 + piece] &&
             total[1 + kHashPieces + piece] == ranks * checks[1 + kHashPieces + piece];
    }
    if (same) {
      if (sums_size > 0) column_sums.view({-1}).copy_(buffer.narrow(0, 0, sums_size));
      CallKey key;
      for (int64_t piece = 0; piece < 4; ++piece) {
        key.seed |= static_cast<uint64_t>(total[1 + 2 * kHashPieces + piece]) << (16 * piece);
        key.offset |= static_cast<uint64_t>(total[1 + 2 * kHashPieces + 4 + piece])
                      << (16 * piece);
      }
      return key;
    }
    // Every rank saw the same totals, so every rank comes here: the full exchange explains
    // the difference, or agrees on the new call (every rank changed its shape alike).
  }
  const auto key = agree(local_key);
  {
    std::lock_guard<std::mutex> lock(agreements_mutex);
    agreements()[state_->name] =
        Agreement{sums_size, dtype, c10::weak_intrusive_ptr<c10d::ProcessGroup>(state_->group)};
  }
  if (sums_size > 0) {
    auto sums = column_sums;
    sum(sums, "summing the column sums of the task signals");
  }
  return key;
}

void GroupCall::sum(at::Tensor& values, const char* what) {
  TORCH_INTERNAL_ASSERT(values.is_contiguous());
  std::vector<at::Tensor> tensors{values};
  c10d::AllreduceOptions options;
  options.reduceOp = c10d::ReduceOp::SUM;
  state_->wait(state_->group->allreduce(tensors, options), what);
}

void GroupCall::sum_squared_norms(const at::Tensor& accumulators) {
  const int64_t first = ops::output_square_slot(state_->arguments->num_tasks());
  TORCH_INTERNAL_ASSERT(ops::plain_square_slot(state_->arguments->num_tasks()) == first + 1);
  auto norms = accumulators.narrow(0, first, 2).clone();
  sum(norms, "summing the squared norms for keep_grad_norm");
  accumulators.narrow(0, first, 2).copy_(norms);
}

std::string registered_group_name(const c10::intrusive_ptr<c10d::ProcessGroup>& group) {
  TORCH_CHECK(group, "graddrop: the process group is null");
  std::string name = group->getGroupName();
  // A group made in C++ often has no name: it is registered under one made from its address
  // (unique while registered, since the registry keeps the group alive).
  if (name.empty()) name = "graddrop-group-" + std::to_string(group->getID());
  c10::intrusive_ptr<c10d::ProcessGroup> registered;
  try {
    registered = c10d::resolve_process_group(name);
  } catch (const c10::Error&) {
    c10d::register_process_group(name, group);
    return name;
  }
  TORCH_CHECK(registered.get() == group.get(), "graddrop: another process group is registered "
              "under this group's name '", name, "'; give the group a unique name "
              "(ProcessGroup::setGroupName)");
  return name;
}

#else  // LibTorch without c10d's group registry (Debian's 1.13)

struct GroupCall::State {};

GroupCall::GroupCall(const std::string& group_name, const ops::CombineArguments&) {
  TORCH_CHECK(false, "graddrop: group_name '", group_name,
              "' needs data-parallel support, which this build of graddrop leaves out: the "
              "LibTorch it was built against has no c10d process-group registry (LibTorch >= "
              "2.2 has)");
}
GroupCall::~GroupCall() = default;
CallKey GroupCall::exchange(CallKey key, const at::Tensor&) { return key; }
void GroupCall::sum(at::Tensor&, const char*) {}
void GroupCall::sum_squared_norms(const at::Tensor&) {}
int GroupCall::rank() const { return 0; }
int GroupCall::size() const { return 1; }

#endif

}  // namespace distributed
}  // namespace graddrop
