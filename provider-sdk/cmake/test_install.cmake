# CTest script test (label integration): installs the SDK into a temporary prefix, builds
# examples/virtual-lights out of tree against it with find_package(floe), runs `--help`, and
# checks that the pkg-config file resolves.
#   -DFLOE_BUILD_DIR -DFLOE_EXAMPLE_DIR -DFLOE_WORK_DIR -DFLOE_GENERATOR -DFLOE_BUILD_TYPE
cmake_minimum_required(VERSION 3.25)

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${FLOE_WORK_DIR}/prefix)
set(build ${FLOE_WORK_DIR}/virtual-lights)
file(REMOVE_RECURSE ${FLOE_WORK_DIR})

run("cmake --install" ${CMAKE_COMMAND} --install ${FLOE_BUILD_DIR} --prefix ${prefix} --component sdk)
foreach(f include/floe/sdk/provider.hpp include/floe/ipc/tree.hpp include/floe/proto/management.pb.h)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB_RECURSE config ${prefix}/*/floeConfig.cmake)
file(GLOB_RECURSE pc ${prefix}/*/floe-sdk.pc)
if(NOT config OR NOT pc)
  message(FATAL_ERROR "package files missing: config='${config}' pc='${pc}'")
endif()

run("configure the example" ${CMAKE_COMMAND} -S ${FLOE_EXAMPLE_DIR} -B ${build} -G ${FLOE_GENERATOR}
    -DCMAKE_BUILD_TYPE=${FLOE_BUILD_TYPE} -DCMAKE_PREFIX_PATH=${prefix})
run("build the example" ${CMAKE_COMMAND} --build ${build} -j 2)
run("virtual-lights --help" ${build}/virtual-lights --help)
if(NOT last_output MATCHES "--count")
  message(FATAL_ERROR "unexpected --help output:\n${last_output}")
endif()

find_program(PKG_CONFIG pkg-config)
if(PKG_CONFIG)
  get_filename_component(pcdir ${pc} DIRECTORY)
  set(ENV{PKG_CONFIG_PATH} ${pcdir})
  run("pkg-config floe-sdk" ${PKG_CONFIG} --cflags --libs floe-sdk)
  string(REGEX MATCH "-I([^ \n]+)" include_flag "${last_output}")
  if(NOT last_output MATCHES "-lfloe_sdk" OR NOT EXISTS "${CMAKE_MATCH_1}/floe/sdk/provider.hpp")
    message(FATAL_ERROR "unexpected pkg-config output: ${last_output}")
  endif()
endif()
message(STATUS "installed SDK at ${prefix}; out-of-tree virtual-lights built and ran")
file(REMOVE_RECURSE ${FLOE_WORK_DIR})
