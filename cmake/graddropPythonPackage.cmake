# The `graddrop` Python package (pip install .): scikit-build-core drives this project with
# GRADDROP_PYTHON_PACKAGE=ON and installs only the COMPONENT python_package below into the wheel.
#
# graddrop_python_find_torch(): before find_package(Torch), point CMake at the LibTorch of the
#   Python that runs the build (the package must be built against *that* torch).
# graddrop_python_install(): after the library target exists, install it and the build record
#   into the package folder. Only a component install (pip's) installs them, so a build folder
#   shared with scripts/test.sh still installs as before with `cmake --install`.

function(graddrop_python_find_torch)
  find_package(Python COMPONENTS Interpreter REQUIRED)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
            "import torch; print(torch.utils.cmake_prefix_path); print(torch.__version__)"
    OUTPUT_VARIABLE graddrop_python_torch OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE graddrop_python_status ERROR_VARIABLE graddrop_python_error)
  if(NOT graddrop_python_status EQUAL 0)
    message(FATAL_ERROR "graddrop: the Python package is built against the torch of "
                        "${Python_EXECUTABLE}, which cannot import torch:\n${graddrop_python_error}"
                        "Install torch first and build without isolation: "
                        "pip install --no-build-isolation .")
  endif()
  string(REPLACE "\n" ";" graddrop_python_torch "${graddrop_python_torch}")
  list(GET graddrop_python_torch 0 graddrop_torch_prefix)
  list(GET graddrop_python_torch 1 graddrop_torch_version)
  # First in the search path: another LibTorch on CMAKE_PREFIX_PATH must not win.
  set(CMAKE_PREFIX_PATH "${graddrop_torch_prefix};${CMAKE_PREFIX_PATH}" PARENT_SCOPE)
  set(GRADDROP_PYTHON_TORCH_VERSION "${graddrop_torch_version}" PARENT_SCOPE)
  set(GRADDROP_PYTHON_TORCH_PREFIX "${graddrop_torch_prefix}" PARENT_SCOPE)
endfunction()

function(graddrop_python_install)
  # The package loads lib/libgraddrop.so by path, so one plain file (no SONAME symlinks: a wheel
  # would store each link as another full copy).
  set(package_dir graddrop)
  install(FILES "$<TARGET_FILE:graddrop>" DESTINATION ${package_dir}/lib
          RENAME libgraddrop.so COMPONENT python_package EXCLUDE_FROM_ALL)
  # torch lives in the same site-packages: site-packages/graddrop/lib -> site-packages/torch/lib.
  # The run path is relative so the installed package does not depend on the build machine's
  # paths; pip torch's libraries find their own CUDA runtime (nvidia/*) by their run paths, and
  # `import torch` has loaded them before the package loads this library.
  install(CODE "file(RPATH_SET FILE \"\$ENV{DESTDIR}\${CMAKE_INSTALL_PREFIX}/${package_dir}/lib/libgraddrop.so\"
                              NEW_RPATH \"\$ORIGIN/../../torch/lib\")"
          COMPONENT python_package EXCLUDE_FROM_ALL)
  set(GRADDROP_BUILD_CUDA_KERNELS ${GRADDROP_WITH_CUDA})
  if(GRADDROP_BUILD_CUDA_KERNELS)
    set(GRADDROP_BUILD_CUDA_KERNELS_PY True)
  else()
    set(GRADDROP_BUILD_CUDA_KERNELS_PY False)
  endif()
  configure_file(${PROJECT_SOURCE_DIR}/python/graddrop/_build_info.py.in
                 ${PROJECT_BINARY_DIR}/python/graddrop/_build_info.py @ONLY)
  install(FILES ${PROJECT_BINARY_DIR}/python/graddrop/_build_info.py
          DESTINATION ${package_dir} COMPONENT python_package EXCLUDE_FROM_ALL)
endfunction()
