/* static_modules.c: the C modules linked into goliat-host.exe, which
 * loads no shared Lua modules; main.c preloads them (GOLIAT_STATIC_MODULES)
 * so that require finds them. Built by host/windows/build.sh from Debian's
 * source packages: lua-cjson (used by scripts) and luafilesystem (used by
 * the busted spec runner through penlight). */
#include <lauxlib.h>

int luaopen_cjson(lua_State *L);
int luaopen_cjson_safe(lua_State *L);
int luaopen_lfs(lua_State *L);

extern const luaL_Reg host_static_modules[];
const luaL_Reg host_static_modules[] = {{"cjson", luaopen_cjson},
                                        {"cjson.safe", luaopen_cjson_safe},
                                        {"lfs", luaopen_lfs},
                                        {NULL, NULL}};
