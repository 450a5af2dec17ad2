# Data-parallel tests (tests/distributed): Gloo groups over loopback, one thread per rank. Built
# with data-parallel support (GRADDROP_DISTRIBUTED, top-level CMakeLists.txt) when Gloo's headers
# are installed (scripts/setup.sh installs Debian's libgloo-dev).
if(GRADDROP_DISTRIBUTED)
  if(GRADDROP_GLOO_INCLUDE_DIR)
    file(GLOB GRADDROP_DISTRIBUTED_TEST_SOURCES CONFIGURE_DEPENDS
         ${CMAKE_CURRENT_SOURCE_DIR}/distributed/*.cpp)
    add_executable(graddrop_distributed_tests ${GRADDROP_DISTRIBUTED_TEST_SOURCES})
    target_link_libraries(graddrop_distributed_tests PRIVATE graddrop_test_support)
    target_include_directories(graddrop_distributed_tests PRIVATE ${PROJECT_SOURCE_DIR}/src
                                                                  ${GRADDROP_GLOO_INCLUDE_DIR})
    # ProcessGroupGloo.hpp declares the class only with USE_C10D_GLOO.
    target_compile_definitions(graddrop_distributed_tests PRIVATE USE_C10D_GLOO)
    add_test(NAME distributed_tests COMMAND graddrop_distributed_tests)
    # TORCH_FR_BUFFER_SIZE=0: see tests/distributed/gloo_ranks.cpp (a race in c10d's flight
    # recorder when one process holds several groups).
    set_tests_properties(distributed_tests PROPERTIES TIMEOUT 300
                                                      ENVIRONMENT TORCH_FR_BUFFER_SIZE=0)
  else()
    message(WARNING "graddrop: Gloo's headers (Debian's libgloo-dev) not found: the data-parallel "
                    "tests are not built")
  endif()
endif()
