#pragma once
// The c10d registry name under which the operator finds a process group given to the C++ API
// (GradDropOptions::process_group): the operator's schema takes the group by name, as Python
// passes group.group_name.
#include <string>

#include "graddrop/compat.h"

#if GRADDROP_HAS_DISTRIBUTED
#include <c10/util/intrusive_ptr.h>

namespace c10d {
class ProcessGroup;
}  // namespace c10d

namespace graddrop {
namespace distributed {

// The group's own name when it has one, else "graddrop-group-<id>"; registers the group under
// that name unless the registry already holds it. Refuses a name that another group holds.
std::string registered_group_name(const c10::intrusive_ptr<c10d::ProcessGroup>& group);

}  // namespace distributed
}  // namespace graddrop
#endif
