# Fake driver libraries for tests, built from tests/fakes. Included from tests/fakes and
# tests/nvml alike, so it defines its targets once whichever the top level adds.
include_guard(GLOBAL)

set(_gpumgr_fakes_dir ${CMAKE_CURRENT_LIST_DIR})

function(_gpumgr_fake_library target source)
  add_library(${target} SHARED ${_gpumgr_fakes_dir}/${source})
  # Never linked by anything: tests dlopen it through GPUMGR_NVML_LIBRARY.
  set_target_properties(${target} PROPERTIES C_STANDARD 11 C_VISIBILITY_PRESET hidden
    LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests/fakes)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(GPUMGR_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(ARGN)
    target_compile_definitions(${target} PRIVATE ${ARGN})
  endif()
endfunction()

# A current driver (every versioned symbol), a pre-2016 one (no _v2/_v3 symbols), and one
# missing a required symbol.
_gpumgr_fake_library(fake_nvml fake_nvml.c)
_gpumgr_fake_library(fake_nvml_old fake_nvml.c FAKE_NVML_OLD_DRIVER)
_gpumgr_fake_library(fake_nvml_no_memory fake_nvml.c FAKE_NVML_NO_MEMORY_INFO)
# A one-device libcuda for the CUDA driver loader's tests.
_gpumgr_fake_library(fake_cuda fake_cuda.c)
