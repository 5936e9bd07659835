# SPDX-License-Identifier: MIT
# normlayers_strict(<target>): ISO C++17 without GNU extensions and warnings as errors, for the
# project's own targets (tests, header checks, examples) only -- PRIVATE, never on the
# normlayers INTERFACE target. Eigen and GTest come in through imported targets, so CMake
# passes their include directories with -isystem and their headers are not checked.
function(normlayers_strict target)
  set_target_properties(${target} PROPERTIES CXX_EXTENSIONS OFF)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANG_AND_ID:CXX,GNU,Clang,AppleClang>:
      -Wall -Wextra -Wpedantic -Wshadow -Wconversion -Werror>)
endfunction()
