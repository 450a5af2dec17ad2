# The documentation check: every repository path, script, build target and CTest test that
# README.md and docs/*.md name exists, and the README's marked excerpts are lines of the files
# they quote (scripts/check_docs.py; python3 without third-party modules).
find_program(GRADDROP_PYTHON3 NAMES python3 DOC "python3 for scripts/check_docs.py")
if(GRADDROP_PYTHON3)
  add_test(NAME docs_paths
           COMMAND "${GRADDROP_PYTHON3}" "${PROJECT_SOURCE_DIR}/scripts/check_docs.py"
                   --root "${PROJECT_SOURCE_DIR}")
else()
  message(STATUS "graddrop: no python3; the documentation check (docs_paths) is not registered")
endif()
