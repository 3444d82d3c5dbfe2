#include "host.h"
void host_open_proc(lua_State *L) { (void)L; }
