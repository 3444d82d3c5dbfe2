#include "host.h"
void host_open_http_server(lua_State *L) { (void)L; }
