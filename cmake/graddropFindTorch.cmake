# find_package(Torch), then make sure every library file LibTorch's config found by name comes
# from that LibTorch's own prefix. Its config calls find_library(c10) without NO_DEFAULT_PATH, so
# on a machine that also has Debian's libtorch-dev a pip LibTorch would link Debian's libc10 too
# (two c10 runtimes in one process: heap corruption at exit).
find_package(Torch REQUIRED)
set(graddrop_torch_libraries "")
foreach(graddrop_torch_lib IN LISTS TORCH_LIBRARIES)
  if(IS_ABSOLUTE "${graddrop_torch_lib}" AND EXISTS "${graddrop_torch_lib}")
    get_filename_component(graddrop_torch_lib_name "${graddrop_torch_lib}" NAME)
    if(EXISTS "${TORCH_INSTALL_PREFIX}/lib/${graddrop_torch_lib_name}")
      set(graddrop_torch_lib "${TORCH_INSTALL_PREFIX}/lib/${graddrop_torch_lib_name}")
    endif()
  endif()
  list(APPEND graddrop_torch_libraries "${graddrop_torch_lib}")
endforeach()
set(TORCH_LIBRARIES ${graddrop_torch_libraries})
