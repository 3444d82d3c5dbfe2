/* time.c: host.time: monotonic and wall clocks, and sleep. */
#include "host.h"
#include "task.h"

#include <stdlib.h>

typedef struct sleep_req {
  uv_timer_t timer;
  task_waiter waiter;
  struct sleep_req *next, *prev; /* in pending */
} sleep_req;

static sleep_req *pending; /* whose timer is not yet closed */

static void free_req(uv_handle_t *h) {
  sleep_req *req = h->data;
  if (req->prev)
    req->prev->next = req->next;
  else
    pending = req->next;
  if (req->next)
    req->next->prev = req->prev;
  free(req);
}

/* At shutdown: close the timers of sleeps still under way, so that their
 * requests are freed. */
static void on_host_close(void *data) {
  (void)data;
  for (sleep_req *req = pending; req; req = req->next)
    if (!uv_is_closing((uv_handle_t *)&req->timer))
      uv_close((uv_handle_t *)&req->timer, free_req);
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
  uv_loop_t *loop = &host_get(L)->loop;
  uv_timer_init(loop, &req->timer);
  req->timer.data = req;
  req->waiter.ref = LUA_NOREF;
  req->prev = NULL;
  req->next = pending;
  if (pending)
    pending->prev = req;
  pending = req;
  /* the loop's clock stopped when this turn began: the task may have run
   * for a while since, and the timer counts from that clock */
  uv_update_time(loop);
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
  host_on_close(host_get(L), on_host_close, NULL);
}
