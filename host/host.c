/* host.c: small helpers shared by every binding (options, failures, the
 * shutdown hooks). */
#include "host.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void host_on_close(host_ctx *ctx, host_close_fn fn, void *data) {
  host_close_hook *h = malloc(sizeof *h);
  if (!h)
    abort();
  h->fn = fn;
  h->data = data;
  h->next = ctx->close_hooks;
  ctx->close_hooks = h;
}

void host_request_exit(host_ctx *ctx, int code) {
  if (!ctx->exiting)
    ctx->exit_code = code;
  ctx->exiting = 1;
  uv_stop(&ctx->loop);
}

/* Push field of the table at idx; raise unless it is nil or of type want. */
static int opt_field(lua_State *L, int idx, const char *field, int want) {
  if (lua_isnoneornil(L, idx))
    return 0;
  luaL_checktype(L, idx, LUA_TTABLE);
  int t = lua_getfield(L, idx, field);
  if (t == LUA_TNIL) {
    lua_pop(L, 1);
    return 0;
  }
  if (t != want && !(want == LUA_TNUMBER && lua_isnumber(L, -1)))
    luaL_error(L, "option '%s' must be a %s, got %s", field,
               lua_typename(L, want), luaL_typename(L, -1));
  return 1;
}

const char *host_opt_string(lua_State *L, int idx, const char *field,
                            const char *def) {
  idx = lua_absindex(L, idx);
  if (!opt_field(L, idx, field, LUA_TSTRING))
    return def;
  const char *s = lua_tostring(L, -1);
  lua_pop(L, 1); /* still referenced by the options table */
  return s;
}

double host_opt_number(lua_State *L, int idx, const char *field, double def) {
  idx = lua_absindex(L, idx);
  if (!opt_field(L, idx, field, LUA_TNUMBER))
    return def;
  double v = lua_tonumber(L, -1);
  lua_pop(L, 1);
  return v;
}

int host_opt_boolean(lua_State *L, int idx, const char *field, int def) {
  idx = lua_absindex(L, idx);
  if (!opt_field(L, idx, field, LUA_TBOOLEAN))
    return def;
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

int host_fail(lua_State *L, const char *code, const char *fmt, ...) {
  va_list ap;
  char buf[1024];
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  lua_pushnil(L);
  lua_pushstring(L, buf);
  if (!code)
    return 2;
  lua_pushstring(L, code);
  return 3;
}

int host_fail_uv(lua_State *L, int err, const char *what) {
  return host_fail(L, uv_err_name(err), "%s: %s", what, uv_strerror(err));
}

char *host_strdup(const char *s) {
  size_t n = strlen(s) + 1;
  char *copy = malloc(n);
  if (copy)
    memcpy(copy, s, n);
  return copy;
}
