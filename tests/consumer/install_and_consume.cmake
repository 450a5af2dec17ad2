# Run by the install_consumer test (see tests/install_consumer.cmake) as
#   cmake -DSETTINGS=<file> -P install_and_consume.cmake
# Installs the graddrop build tree into a fresh prefix, then configures, builds and runs the
# consumer project against that prefix with the LibTorch, generator and compiler of the build.
cmake_minimum_required(VERSION 3.21)
include("${SETTINGS}")

file(REMOVE_RECURSE "${CONSUMER_WORK_DIR}")
set(prefix "${CONSUMER_WORK_DIR}/install")

execute_process(COMMAND "${CMAKE_COMMAND}" --install "${GRADDROP_BUILD_DIR}" --prefix "${prefix}"
                RESULT_VARIABLE install_result)
if(NOT install_result EQUAL 0)
  message(FATAL_ERROR "cmake --install ${GRADDROP_BUILD_DIR} failed: ${install_result}")
endif()
file(GLOB_RECURSE installed_config "${prefix}/graddropConfig.cmake")
if(NOT installed_config)
  message(FATAL_ERROR "no graddropConfig.cmake under ${prefix}")
endif()

# The prefix first, then wherever the build found LibTorch. It is passed as one quoted argument
# below: inside a list its ';' would split it.
set(prefix_path "${prefix}" ${CONSUMER_PREFIX_PATH})
set(build_options
    "-DCMAKE_CXX_COMPILER=${CONSUMER_CXX_COMPILER}"
    "-DCMAKE_BUILD_TYPE=${CONSUMER_BUILD_TYPE}")
if(CONSUMER_TORCH_DIR)
  list(APPEND build_options "-DTorch_DIR=${CONSUMER_TORCH_DIR}")
endif()
if(CONSUMER_CUDA_COMPILER)
  list(APPEND build_options "-DCMAKE_CUDA_COMPILER=${CONSUMER_CUDA_COMPILER}")
endif()
set(makeprogram_option "")
if(CONSUMER_MAKE_PROGRAM)
  set(makeprogram_option --build-makeprogram "${CONSUMER_MAKE_PROGRAM}")
endif()

execute_process(
  COMMAND "${CONSUMER_CTEST_COMMAND}" --build-and-test "${CONSUMER_SOURCE_DIR}"
          "${CONSUMER_WORK_DIR}/build" --build-generator "${CONSUMER_GENERATOR}"
          ${makeprogram_option} --build-noclean --build-options "-DCMAKE_PREFIX_PATH=${prefix_path}" ${build_options}
          --test-command "${CONSUMER_CTEST_COMMAND}" --output-on-failure
  RESULT_VARIABLE consume_result)
if(NOT consume_result EQUAL 0)
  message(FATAL_ERROR "the consumer project failed to configure, build or run: ${consume_result}")
endif()
message(STATUS "installed graddrop found, linked and run from ${prefix}")
