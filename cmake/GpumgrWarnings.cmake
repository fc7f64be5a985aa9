# gpumgr_warnings(target): the project's warning set; errors when GPUMGR_WERROR is on.
function(gpumgr_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
    -Wno-sign-conversion -Wnon-virtual-dtor -Wold-style-cast -Woverloaded-virtual)
  if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    target_compile_options(${target} PRIVATE -Wthread-safety)
  endif()
  if(GPUMGR_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
