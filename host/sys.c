#include "host.h"
void host_open_sys(lua_State *L) { (void)L; }
