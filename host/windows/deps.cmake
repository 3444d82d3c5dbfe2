# Included by CMakeLists.txt when cross-building for Windows: the static
# dependencies that host/windows/build.sh built from Debian's source
# packages into GOLIAT_WIN_DEPS (include/ and lib/), under the target names
# that pkg-config gives on Linux.
set(GOLIAT_WIN_DEPS "" CACHE PATH
  "Windows dependencies built by host/windows/build.sh")
if(NOT EXISTS "${GOLIAT_WIN_DEPS}/lib/liblua.a")
  message(FATAL_ERROR "GOLIAT_WIN_DEPS (${GOLIAT_WIN_DEPS}) holds no "
    "Windows dependencies: build with host/windows/build.sh")
endif()
set(_deps_inc "${GOLIAT_WIN_DEPS}/include")
set(_deps_lib "${GOLIAT_WIN_DEPS}/lib")

add_library(PkgConfig::LUA INTERFACE IMPORTED)
set_target_properties(PkgConfig::LUA PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_deps_inc}"
  INTERFACE_LINK_LIBRARIES "${_deps_lib}/liblua.a")

add_library(PkgConfig::UV INTERFACE IMPORTED)
set_target_properties(PkgConfig::UV PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_deps_inc}"
  INTERFACE_LINK_LIBRARIES
    "${_deps_lib}/libuv.a;ws2_32;iphlpapi;userenv;psapi;user32;advapi32;dbghelp;ole32;shell32")

# libcurl with Schannel (Windows' own TLS) and zlib, nothing else optional
add_library(PkgConfig::CURL INTERFACE IMPORTED)
set_target_properties(PkgConfig::CURL PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_deps_inc}"
  INTERFACE_COMPILE_DEFINITIONS CURL_STATICLIB
  INTERFACE_LINK_LIBRARIES
    "${_deps_lib}/libcurl.a;${_deps_lib}/libz.a;ws2_32;crypt32;bcrypt;secur32;advapi32;normaliz")

# cJSON (host.json): one C file
add_library(PkgConfig::CJSON INTERFACE IMPORTED)
set_target_properties(PkgConfig::CJSON PROPERTIES
  INTERFACE_INCLUDE_DIRECTORIES "${_deps_inc}"
  INTERFACE_LINK_LIBRARIES "${_deps_lib}/libcjson.a")

set(HTTP_PARSER_INCLUDE_DIR "${_deps_inc}")
set(HTTP_PARSER_LIBRARY "${_deps_lib}/libhttp_parser.a")

# C modules linked in and preloaded (host/windows/static_modules.c)
add_library(GoliatWin::modules INTERFACE IMPORTED)
set_target_properties(GoliatWin::modules PROPERTIES
  INTERFACE_LINK_LIBRARIES "${_deps_lib}/libluamodules.a;${_deps_lib}/liblua.a")

# Windows 8 and later: nested Job Objects
add_compile_definitions(_WIN32_WINNT=0x0602 WINVER=0x0602)
