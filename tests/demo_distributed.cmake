# The data-parallel Multi-Fashion example on a tiny subset, so that CI catches a broken example:
# 2 ranks (Gloo over 127.0.0.1) with global purity, then the step-time comparison. Like
# demo.cmake, included by tests/CMakeLists.txt it registers the test; run as `cmake -P` it is
# the test (PROGRAM: distributed_fashion, PORT: the rendezvous port).

if(NOT CMAKE_SCRIPT_MODE_FILE)
  if(GRADDROP_BUILD_EXAMPLES AND GRADDROP_DISTRIBUTED AND GRADDROP_GLOO_INCLUDE_DIR)
    add_test(NAME demo_distributed_fashion
             COMMAND ${CMAKE_COMMAND} -DPROGRAM=$<TARGET_FILE:distributed_fashion> -DPORT=29613
                     -P ${CMAKE_CURRENT_LIST_FILE})
    set_tests_properties(demo_distributed_fashion PROPERTIES TIMEOUT 300)
  endif()
  return()
endif()

set(tiny --train-size=512 --test-size=200 --batch-size=64 --threads=1 --no-progress
         --timeout=60)
# Two COMMANDs of one execute_process run at the same time (a pipe joins them; rank 1's output
# is rank 0's ignored input), which is all two ranks need.
foreach(mode "--epochs=1" "--compare-step-time;--timing-rounds=1;--timing-steps=2")
  execute_process(
    COMMAND "${PROGRAM}" --rank=1 --world-size=2 --master-port=${PORT} ${tiny} ${mode}
    COMMAND "${PROGRAM}" --rank=0 --world-size=2 --master-port=${PORT} ${tiny} ${mode}
    RESULTS_VARIABLE statuses OUTPUT_VARIABLE output ERROR_VARIABLE errors)
  message("${output}${errors}")
  if(NOT statuses STREQUAL "0;0")
    message(FATAL_ERROR "distributed demo (${mode}): exit statuses ${statuses}")
  endif()
  if(mode STREQUAL "--epochs=1")
    if(NOT output MATCHES "summary: ranks 2, purity global")
      message(FATAL_ERROR "distributed demo: no summary line")
    endif()
  elseif(NOT output MATCHES "GradDrop, global purity +[0-9.]+ ms")
    message(FATAL_ERROR "distributed demo: no step time for global purity")
  endif()
endforeach()
