#pragma once
// Everything of graddrop's public C++ API.
#include "graddrop/combine.h"
#include "graddrop/function.h"
#include "graddrop/layer.h"
#include "graddrop/options.h"
#include "graddrop/statistics.h"
