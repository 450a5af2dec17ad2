# The differential fuzz test (tests/fuzz/): random cases against the float64 reference on every
# CPU instruction set. GRADDROP_FUZZ_CASES sets the cases per test (CTest's run: the default).
add_executable(graddrop_fuzz_tests ${CMAKE_CURRENT_SOURCE_DIR}/fuzz/combine_fuzz_test.cpp)
target_link_libraries(graddrop_fuzz_tests PRIVATE graddrop_test_support)
add_test(NAME fuzz_tests COMMAND graddrop_fuzz_tests)
