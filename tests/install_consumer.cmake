# Packaging test: install this build into a scratch prefix, then build and run tests/consumer
# (find_package(graddrop), graddrop::graddrop) against it. The settings of this build (LibTorch
# location, generator, compiler) travel in a file, so lists with ';' survive intact.
set(GRADDROP_CONSUMER_SETTINGS "${CMAKE_CURRENT_BINARY_DIR}/install_consumer_settings.cmake")
set(graddrop_consumer_prefix_path ${CMAKE_PREFIX_PATH})
if(Torch_DIR)
  list(APPEND graddrop_consumer_prefix_path "${Torch_DIR}")
endif()
file(WRITE "${GRADDROP_CONSUMER_SETTINGS}"
"set(GRADDROP_BUILD_DIR [==[${PROJECT_BINARY_DIR}]==])
set(CONSUMER_SOURCE_DIR [==[${CMAKE_CURRENT_SOURCE_DIR}/consumer]==])
set(CONSUMER_WORK_DIR [==[${CMAKE_CURRENT_BINARY_DIR}/install_consumer]==])
set(CONSUMER_PREFIX_PATH [==[${graddrop_consumer_prefix_path}]==])
set(CONSUMER_TORCH_DIR [==[${Torch_DIR}]==])
set(CONSUMER_GENERATOR [==[${CMAKE_GENERATOR}]==])
set(CONSUMER_MAKE_PROGRAM [==[${CMAKE_MAKE_PROGRAM}]==])
set(CONSUMER_CXX_COMPILER [==[${CMAKE_CXX_COMPILER}]==])
set(CONSUMER_CUDA_COMPILER [==[${CMAKE_CUDA_COMPILER}]==])
set(CONSUMER_BUILD_TYPE [==[${CMAKE_BUILD_TYPE}]==])
set(CONSUMER_CTEST_COMMAND [==[${CMAKE_CTEST_COMMAND}]==])
")
add_test(NAME install_consumer
         COMMAND ${CMAKE_COMMAND} -DSETTINGS=${GRADDROP_CONSUMER_SETTINGS}
                 -P ${CMAKE_CURRENT_SOURCE_DIR}/consumer/install_and_consume.cmake)
# Compiles one file against LibTorch's headers: minutes on a small machine.
set_tests_properties(install_consumer PROPERTIES TIMEOUT 1200 LABELS install)
