# The self-test program for users (tools/graddrop_selftest.cpp): it must pass on this machine
# (GPU checks reported as skipped without a GPU), and with every output perturbed it must fail
# (tests/cpu/selftest_test.cpp checks that each failure names the differing element).
add_test(NAME selftest_program COMMAND graddrop_selftest --no-bandwidth)
set_tests_properties(selftest_program PROPERTIES
                     PASS_REGULAR_EXPRESSION "PASSED: [1-9][0-9]* passed, 0 failed")
add_test(NAME selftest_perturbed COMMAND graddrop_selftest --no-bandwidth --perturb)
set_tests_properties(selftest_perturbed PROPERTIES
                     PASS_REGULAR_EXPRESSION "FAILED: [0-9]+ passed, [1-9][0-9]* failed")
