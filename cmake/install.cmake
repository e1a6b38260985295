# `cmake --install` puts the headers, the static libraries and a CMake package in the prefix, so
# that another project (e.g. Python bindings) can do find_package(turboquant) and link tq::engine.
# Skipped where fmt is the header-only copy of TQ_DEPS_DIR (GPU machines without the packages).
if(NOT fmt_FOUND)
  return()
endif()
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(_tq_targets tq_options tq_codec tq_kv tq_model tq_runner tq_backend_cpu tq_engine tq_serve)
if(TQ_CUDA)
  list(APPEND _tq_targets tq_cuda tq_backend_cuda)
endif()
foreach(t ${_tq_targets})
  string(REPLACE "tq_" "" _name ${t})
  set_target_properties(${t} PROPERTIES EXPORT_NAME ${_name})  # tq_engine -> tq::engine, as the aliases
endforeach()
install(TARGETS ${_tq_targets} EXPORT turboquantTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY include/tq DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
if(TARGET tq)
  install(TARGETS tq RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
set(_tq_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/turboquant)
install(EXPORT turboquantTargets NAMESPACE tq:: DESTINATION ${_tq_cmake_dir})
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/turboquantConfig.cmake.in ${CMAKE_CURRENT_BINARY_DIR}/turboquantConfig.cmake
                              INSTALL_DESTINATION ${_tq_cmake_dir})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/turboquantConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/turboquantConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/turboquantConfigVersion.cmake
        DESTINATION ${_tq_cmake_dir})
