/* time.c: host.time: monotonic and wall clocks, and sleep. */
#include "host.h"
#include "task.h"

#include <stdlib.h>

typedef struct sleep_req {
  uv_timer_t timer;
  task_waiter waiter;
} sleep_req;

static void free_req(uv_handle_t *h) {
  free(h->data);
}

static void on_wake(uv_timer_t *timer) {
  sleep_req *req = timer->data;
  task_waiter_wake(&req->waiter, 0);
  uv_close((uv_handle_t *)timer, free_req);
}

/* host.time.sleep(seconds): yields the task for that long. */
static int l_sleep(lua_State *L) {
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && s < 1e9, 1, "seconds must be >= 0");
  task_check_can_wait(L, "host.time.sleep");
  sleep_req *req = malloc(sizeof *req);
  if (!req)
    return luaL_error(L, "out of memory");
  uv_timer_init(&host_get(L)->loop, &req->timer);
  req->timer.data = req;
  req->waiter.ref = LUA_NOREF;
  uv_timer_start(&req->timer, on_wake, (uint64_t)(s * 1000.0 + 0.5), 0);
  return task_wait(L, &req->waiter);
}

/* host.time.monotonic(): seconds from an arbitrary start, never jumps. */
static int l_monotonic(lua_State *L) {
  lua_pushnumber(L, (lua_Number)uv_hrtime() / 1e9);
  return 1;
}

/* host.time.now(): wall clock, seconds since the Unix epoch (float). */
static int l_now(lua_State *L) {
  uv_timeval64_t tv;
  int rc = uv_gettimeofday(&tv);
  if (rc != 0)
    return host_fail_uv(L, rc, "gettimeofday");
  lua_pushnumber(L, (lua_Number)tv.tv_sec + (lua_Number)tv.tv_usec / 1e6);
  return 1;
}

void host_open_time(lua_State *L) {
  static const luaL_Reg funcs[] = {{"sleep", l_sleep},
                                   {"monotonic", l_monotonic},
                                   {"now", l_now},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "time");
}
