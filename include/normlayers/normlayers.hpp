// SPDX-License-Identifier: MIT
#pragma once

// normlayers: normalization layers over Eigen tensors. Umbrella header.

#include <normlayers/batch_norm.hpp>
#include <normlayers/errors.hpp>
#include <normlayers/functional.hpp>
#include <normlayers/group_norm.hpp>
#include <normlayers/instance_norm.hpp>
#include <normlayers/layer_norm.hpp>
#include <normlayers/mode.hpp>
#include <normlayers/options.hpp>
#include <normlayers/parallel.hpp>
#include <normlayers/rms_norm.hpp>
#include <normlayers/span.hpp>
