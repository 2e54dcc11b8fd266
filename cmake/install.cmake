# install.cmake - what `cmake --install` puts under a prefix: for C hosts the
# header, libloom.{a,so}, loom.pc and the `loom` CMake package; the `loom`
# CLI; and for a stock lua5.4 the module layout loom/core.so + loom/*.lua.
#
# The rockspec points the Lua module layout at LuaRocks' LIBDIR / LUADIR
# (LOOM_LIBDIR_LUA / LOOM_LUADIR) and turns LOOM_INSTALL_DEV off: LuaRocks
# deploys everything under its rock's lib/ as Lua modules, so a header, the
# libraries or pkgconfig/ there would land on package.cpath.

include(CMakePackageConfigHelpers)

# The Lua ABI directory ("5.4") is part of the module paths lua5.4 searches.
string(REGEX MATCH "^[0-9]+\\.[0-9]+" LOOM_LUA_ABI "${LUA_VERSION}")
if(NOT LOOM_LUA_ABI)
  set(LOOM_LUA_ABI 5.4)
endif()

option(LOOM_INSTALL_DEV
  "Install loom.h, libloom.a, libloom.so, loom.pc and the CMake package" ON)
set(LOOM_LUADIR "${CMAKE_INSTALL_DATADIR}/lua/${LOOM_LUA_ABI}" CACHE PATH
  "Directory that receives loom/*.lua (relative: under the prefix)")
set(LOOM_LIBDIR_LUA "${CMAKE_INSTALL_LIBDIR}/lua/${LOOM_LUA_ABI}" CACHE PATH
  "Directory that receives loom/core.so (relative: under the prefix)")
set(LOOM_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/loom" CACHE PATH
  "Directory that receives loomConfig.cmake and its companions")
set(LOOM_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE PATH
  "Directory that receives loom.pc")

# LuaRocks passes the headers of the Lua it installs for; prefer them over
# whatever pkg-config found, so the module matches the interpreter.
if(LUA_INCDIR AND EXISTS "${LUA_INCDIR}/lua.h")
  target_include_directories(loom_objects BEFORE PRIVATE "${LUA_INCDIR}")
  target_include_directories(loom_core BEFORE PRIVATE "${LUA_INCDIR}")
  target_include_directories(loom_cli BEFORE PRIVATE "${LUA_INCDIR}")
endif()

# Components: Cli (bin/loom), Lua (the module for lua5.4), Runtime
# (libloom.so.*), Development (everything a C host builds against).
install(TARGETS loom_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Cli)

# The module a stock lua5.4 loads: require "loom" finds loom/init.lua on
# package.path, which requires "loom.core", found as loom/core.so on
# package.cpath.
install(TARGETS loom_core LIBRARY DESTINATION ${LOOM_LIBDIR_LUA}/loom COMPONENT Lua)
install(FILES ${LOOM_LUA_FILES} DESTINATION ${LOOM_LUADIR}/loom COMPONENT Lua)

if(NOT LOOM_INSTALL_DEV)
  return()
endif()

# C hosts: header, both libraries and the exported targets loom::loom
# (shared) and loom::loom_static.
install(FILES ${PROJECT_SOURCE_DIR}/include/loom.h
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development)
install(TARGETS loom_shared loom_static EXPORT loomTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime
    NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)
install(EXPORT loomTargets NAMESPACE loom:: FILE loomTargets.cmake
  DESTINATION ${LOOM_INSTALL_CMAKEDIR} COMPONENT Development)

# The config and its targets file locate the prefix relative to themselves,
# so an installed tree can be moved.
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/loomConfig.cmake.in
  ${PROJECT_BINARY_DIR}/loomConfig.cmake INSTALL_DESTINATION ${LOOM_INSTALL_CMAKEDIR})
# 0.x: a minor release may break the API, so only patch releases are
# compatible; from 1.0 on this becomes SameMajorVersion.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/loomConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/loomConfig.cmake ${PROJECT_BINARY_DIR}/loomConfigVersion.cmake
  DESTINATION ${LOOM_INSTALL_CMAKEDIR} COMPONENT Development)

# loom.pc names the prefix it is installed under, which `cmake --install
# --prefix P` may choose after configuration. So the template is filled in
# two passes: everything but the prefix now, the prefix at install time.
set(LOOM_PC_PREFIX "@LOOM_PC_PREFIX@")
foreach(kind LIBDIR INCLUDEDIR)
  if(IS_ABSOLUTE "${CMAKE_INSTALL_${kind}}")
    set(LOOM_PC_${kind} "${CMAKE_INSTALL_${kind}}")
  else()
    set(LOOM_PC_${kind} "\${prefix}/${CMAKE_INSTALL_${kind}}")
  endif()
endforeach()
configure_file(${PROJECT_SOURCE_DIR}/cmake/loom.pc.in ${PROJECT_BINARY_DIR}/loom.pc.in @ONLY)
install(CODE "
  set(LOOM_PC_PREFIX \"\${CMAKE_INSTALL_PREFIX}\")
  configure_file(\"${PROJECT_BINARY_DIR}/loom.pc.in\" \"${PROJECT_BINARY_DIR}/loom.pc\" @ONLY)
" COMPONENT Development)
install(FILES ${PROJECT_BINARY_DIR}/loom.pc
  DESTINATION ${LOOM_INSTALL_PKGCONFIGDIR} COMPONENT Development)
