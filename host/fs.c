#include "host.h"
void host_open_fs(lua_State *L) { (void)L; }
