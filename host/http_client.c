#include "host.h"
void host_open_http_client(lua_State *L) { (void)L; }
