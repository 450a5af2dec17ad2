# The Multi-Fashion demo on a tiny subset, so that CI catches a broken demo. This file has two
# roles: included by tests/CMakeLists.txt it registers the test; run as `cmake -P` it is the
# test (DEMO: the program, OUT_DIR: a scratch directory).
#
# tests/ is added before examples/, so `if(TARGET multitask_fashion)` would still be false
# here; examples/ always defines the target (zlib is REQUIRED there), so the option decides.

if(NOT CMAKE_SCRIPT_MODE_FILE)
  if(GRADDROP_BUILD_EXAMPLES)
    add_test(NAME demo_multitask_fashion
             COMMAND ${CMAKE_COMMAND} -DDEMO=$<TARGET_FILE:multitask_fashion>
                     -DOUT_DIR=${CMAKE_CURRENT_BINARY_DIR}/demo_multitask_fashion
                     -P ${CMAKE_CURRENT_LIST_FILE})
    set_tests_properties(demo_multitask_fashion PROPERTIES TIMEOUT 600)
  endif()
  return()
endif()

function(expect condition_text)
  if(NOT ${ARGN})
    message(FATAL_ERROR "demo test: ${condition_text}")
  endif()
endfunction()

file(REMOVE_RECURSE "${OUT_DIR}")
file(MAKE_DIRECTORY "${OUT_DIR}")
set(tiny --train-size=300 --test-size=200 --batch-size=50 --seeds=0 --threads=1 --no-progress)

# 1. One epoch of both methods: exit status, results table, CSV rows, plot (when gnuplot is
#    there; otherwise the program must say it is missing and still write the CSV).
execute_process(COMMAND "${DEMO}" ${tiny} --epochs=1 "--out-dir=${OUT_DIR}/run"
                RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE errors)
message("${output}${errors}")
expect("the demo exited with '${status}'" status EQUAL 0)
expect("no results table on stdout" output MATCHES "GradDrop time overhead: [0-9.]+x")
set(csv "${OUT_DIR}/run/multitask_fashion_metrics.csv")
expect("${csv} was not written" EXISTS "${csv}")
file(STRINGS "${csv}" rows)
list(LENGTH rows row_count)
expect("${csv} has ${row_count} lines, expected a header and 2 rows" row_count EQUAL 3)
list(GET rows 0 header)
expect("unexpected CSV header '${header}'" header STREQUAL
       "method,seed,epoch,train_loss_task1,train_loss_task2,test_acc_task1,test_acc_task2,epoch_seconds")
list(GET rows 1 equal_weight_row)
list(GET rows 2 graddrop_row)
expect("bad equal_weight row '${equal_weight_row}'" equal_weight_row MATCHES
       "^equal_weight,0,1,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+$")
expect("bad graddrop row '${graddrop_row}'" graddrop_row MATCHES
       "^graddrop,0,1,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+,[0-9.e+-]+$")
find_program(GNUPLOT gnuplot)
if(GNUPLOT)
  set(png "${OUT_DIR}/run/multitask_fashion_accuracy.png")
  expect("gnuplot is installed but ${png} was not written" EXISTS "${png}")
  file(SIZE "${png}" png_size)
  expect("${png} is empty" png_size GREATER 1000)
else()
  expect("gnuplot is missing and the demo did not say so" output MATCHES "gnuplot is not installed")
endif()

# 2. Missing data: a clear error that names the Debian package, and a failing exit status.
execute_process(COMMAND "${DEMO}" ${tiny} "--data-dir=${OUT_DIR}/no-such-directory"
                "--out-dir=${OUT_DIR}/missing"
                RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE errors)
expect("missing data: expected exit status 1, got '${status}'" status EQUAL 1)
expect("missing data: the error does not name the package: ${errors}"
       errors MATCHES "file not found.*dataset-fashion-mnist")

# 3. Corrupt data: zlib reads a file that is not gzip as it is, so these bytes reach the IDX
#    header check.
file(MAKE_DIRECTORY "${OUT_DIR}/corrupt")
file(WRITE "${OUT_DIR}/corrupt/train-images-idx3-ubyte.gz" "this is not an IDX file")
execute_process(COMMAND "${DEMO}" ${tiny} "--data-dir=${OUT_DIR}/corrupt"
                "--out-dir=${OUT_DIR}/corrupt-out"
                RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE errors)
expect("corrupt data: expected exit status 1, got '${status}'" status EQUAL 1)
expect("corrupt data: the error does not say bad magic and name the package: ${errors}"
       errors MATCHES "bad IDX magic.*dataset-fashion-mnist")

# 4. A bad flag is refused with a usage error.
execute_process(COMMAND "${DEMO}" --epochs=zero RESULT_VARIABLE status
                OUTPUT_VARIABLE output ERROR_VARIABLE errors)
expect("--epochs=zero: expected exit status 2, got '${status}'" status EQUAL 2)

# 5. The step-time comparison runs, and both GradDrop paths compute the same gradients.
execute_process(COMMAND "${DEMO}" ${tiny} --compare-step-time --timing-rounds=1
                --timing-steps=2
                RESULT_VARIABLE status OUTPUT_VARIABLE output ERROR_VARIABLE errors)
message("${output}${errors}")
expect("--compare-step-time exited with '${status}'" status EQUAL 0)
expect("--compare-step-time printed no ratio" output MATCHES "GradDropLayer: [0-9.]+x")
string(REGEX MATCH "difference[^=]*= ([0-9.e+-]+)" difference_line "${output}")
expect("--compare-step-time printed no gradient difference" difference_line)
expect("the two GradDrop paths disagree: ${CMAKE_MATCH_1}" CMAKE_MATCH_1 LESS 1e-5)
