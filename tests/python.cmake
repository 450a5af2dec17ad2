# The operator tests (python/test_ops.py) call the operators through torch.ops from the project's
# virtual environment; registered only when that environment's torch is the LibTorch this build
# uses. The installed package's suite (python/package/) runs after `pip install` in
# scripts/test.sh: a copy installed earlier would load a second libgraddrop into this process.
set(GRADDROP_PYTHON "${PROJECT_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python whose torch matches the LibTorch in use (for the pytest suite)")
if(EXISTS "${GRADDROP_PYTHON}")
  execute_process(
    COMMAND "${GRADDROP_PYTHON}" -c "import torch, pytest; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE graddrop_python_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE graddrop_python_status ERROR_QUIET)
  if(graddrop_python_status EQUAL 0)
    file(REAL_PATH "${graddrop_python_torch_prefix}/Torch" graddrop_python_torch_dir)
    file(REAL_PATH "${Torch_DIR}" graddrop_torch_dir)
  endif()
endif()
if(graddrop_python_torch_dir AND graddrop_python_torch_dir STREQUAL graddrop_torch_dir)
  add_test(NAME python_ops
           COMMAND "${GRADDROP_PYTHON}" -m pytest -q -p no:cacheprovider
                   ${CMAKE_CURRENT_SOURCE_DIR}/python/test_ops.py)
  set_tests_properties(python_ops PROPERTIES
                       ENVIRONMENT "GRADDROP_LIBRARY=$<TARGET_FILE:graddrop>")
else()
  message(STATUS "graddrop: no Python with this LibTorch's torch; the pytest suite is not registered")
endif()
