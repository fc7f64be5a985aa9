# Installs the build tree into a temporary prefix, builds tests/install/consumer against it
# with find_package(gpumgr), runs it and checks its output.
# Variables: BUILD_DIR, CONSUMER_DIR, WORK_DIR, GENERATOR, CXX_COMPILER, SANITIZE.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

step(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
if(NOT EXISTS ${WORK_DIR}/prefix/include/gpumgr/manager.h)
  message(FATAL_ERROR "the public headers were not installed")
endif()
if(EXISTS ${WORK_DIR}/prefix/include/core OR EXISTS ${WORK_DIR}/prefix/include/nvml)
  message(FATAL_ERROR "internal headers were installed")
endif()

set(flags)
if(SANITIZE)
  list(APPEND flags "-DCMAKE_CXX_FLAGS=-fsanitize=${SANITIZE}"
       "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=${SANITIZE}")
endif()
step(${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/build -G ${GENERATOR}
     -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix ${flags})
step(${CMAKE_COMMAND} --build ${WORK_DIR}/build)

# The consumer must not pick up GPUMGR_SIMULATE/GPUMGR_SOCKET from the caller's environment.
unset(ENV{GPUMGR_SOCKET})
step(${WORK_DIR}/build/app)
set(expected
    "devices 2\nlease consumer-job on device 0: 10 GiB\nleased 10737418240 admissible 9878424780\nsucceeded 1\n")
if(NOT step_output STREQUAL expected)
  message(FATAL_ERROR "unexpected output:\n${step_output}\nexpected:\n${expected}")
endif()
message(STATUS "consumer output:\n${step_output}")
