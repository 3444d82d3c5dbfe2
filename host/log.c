/* log.c: leveled, timestamped log lines on stderr, for C and Lua alike. */
#include "log.h"
#include "host.h"
#include "platform.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int min_level = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

int host_log_set_level(int level) {
  int old = min_level;
  min_level = level;
  return old;
}

int host_log_parse_level(const char *name) {
  for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
    if (strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

static void write_line(int level, const char *msg) {
  uv_timeval64_t tv;
  struct tm tm;
  char stamp[64] = "?";
  if (uv_gettimeofday(&tv) == 0 && plat_gmtime((time_t)tv.tv_sec, &tm) == 0)
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  fprintf(stderr, "%s %-5s %s\n", stamp, level_names[level], msg);
  fflush(stderr);
}

void host_log(int level, const char *fmt, ...) {
  if (level < min_level)
    return;
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  write_line(level, buf);
}

/* host.log.<level>(fmt, ...): string.format when there are arguments. */
static int log_at(lua_State *L, int level) {
  if (level < min_level)
    return 0;
  if (lua_gettop(L) > 1) {
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_insert(L, 1);
    lua_pop(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
  }
  write_line(level, luaL_tolstring(L, 1, NULL));
  return 0;
}

static int l_debug(lua_State *L) {
  return log_at(L, LOG_DEBUG);
}
static int l_info(lua_State *L) {
  return log_at(L, LOG_INFO);
}
static int l_warn(lua_State *L) {
  return log_at(L, LOG_WARN);
}
static int l_error(lua_State *L) {
  return log_at(L, LOG_ERROR);
}

static int l_set_level(lua_State *L) {
  int level = host_log_parse_level(luaL_checkstring(L, 1));
  luaL_argcheck(L, level >= 0, 1, "expected debug, info, warn or error");
  lua_pushstring(L, level_names[host_log_set_level(level)]);
  return 1;
}

void host_open_log(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"debug", l_debug}, {"info", l_info},           {"warn", l_warn},
      {"error", l_error}, {"set_level", l_set_level}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "log");
}
