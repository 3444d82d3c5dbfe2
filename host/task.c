/* task.c: Lua coroutines scheduled on the libuv loop.
 *
 * Every piece of Lua runs in a task: the main chunk, each spawned function,
 * each HTTP handler and signal handler. A task is resumed only from the
 * loop's idle callback, never from inside another task, so a binding that
 * wakes a task merely puts it on the ready list.
 */
#include "task.h"
#include "log.h"
#include "platform.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TASK_MT "host.task"
#define JOIN_MT "host.task.join"
#define EVENT_MT "host.task.event"
#define TASKS_KEY "host.tasks" /* registry: thread -> task userdata */
#define WATCHDOG_COUNT                                                         \
  10000 /* instructions between checks, in the                                 \
           coroutines a task makes of its own */

typedef enum { T_READY, T_RUNNING, T_WAITING, T_DONE, T_FAILED } task_state;

static const char *const state_names[] = {"ready", "running", "waiting", "done",
                                          "failed"};

typedef struct task {
  lua_State *co;
  task_state state;
  unsigned wait_id;
  int pending_nargs; /* values on co's stack for its next resume */
  int is_main;
  int stopped;     /* the watchdog yielded it for good */
  char where[128]; /* "file:line:" where the watchdog found it */
  struct task *next_ready;
  char name[64];
} task;

typedef struct join_req {
  task_waiter waiter;
} join_req;

/* uservalue slots of a task userdata */
enum { UV_THREAD = 1, UV_RESULT = 2, UV_JOINERS = 3, UV_COUNT = 3 };

static task *check_task(lua_State *L, int idx) {
  return luaL_checkudata(L, idx, TASK_MT);
}

/* Push the task userdata of thread co, or nil. */
static void push_task_of(lua_State *L, lua_State *co) {
  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushthread(co); /* the main thread is never a key: gives nil */
  lua_xmove(co, L, 1);
  lua_rawget(L, -2);
  lua_remove(L, -2);
}

static task *task_of(lua_State *L) {
  push_task_of(L, L);
  task *t = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return t;
}

/* ---- the ready list ---- */

static void on_ready(uv_idle_t *idle);

static void enqueue(host_ctx *ctx, task *t) {
  t->state = T_READY;
  t->next_ready = NULL;
  if (ctx->ready_tail)
    ctx->ready_tail->next_ready = t;
  else
    ctx->ready_head = t;
  ctx->ready_tail = t;
  if (!uv_is_active((uv_handle_t *)&ctx->ready_idle))
    uv_idle_start(&ctx->ready_idle, on_ready);
}

/* ---- finishing ---- */

static void wake_joiners(lua_State *L, int task_idx) {
  lua_getiuservalue(L, task_idx, UV_JOINERS);
  lua_getiuservalue(L, task_idx, UV_RESULT);
  int res = lua_gettop(L);
  lua_Integer n = luaL_len(L, res - 1);
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, res - 1, i);
    join_req *j = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lua_State *co = task_waiter_thread(&j->waiter);
    if (!co) {
      task_waiter_cancel(&j->waiter);
      continue;
    }
    lua_Integer nres = (lua_rawgeti(L, res, 0), lua_tointeger(L, -1));
    lua_pop(L, 1);
    for (lua_Integer k = 1; k <= nres; k++)
      lua_rawgeti(L, res, k);
    lua_xmove(L, co, (int)nres);
    task_waiter_wake(&j->waiter, (int)nres);
  }
  lua_pop(L, 2);
  lua_newtable(L);
  lua_setiuservalue(L, task_idx, UV_JOINERS);
}

/* Record the outcome: the n values on top of ctx->L become the result
 * table {[0] = n + 1, ok, values...}, then joiners are woken. */
static void finish(host_ctx *ctx, task *t, int ok, int n) {
  lua_State *L = ctx->L;
  lua_createtable(L, n + 1, 1);
  lua_insert(L, -(n + 1));
  for (int i = n; i >= 1; i--)
    lua_rawseti(L, -(i + 1), i + 1);
  lua_pushboolean(L, ok);
  lua_rawseti(L, -2, 1);
  lua_pushinteger(L, n + 1);
  lua_rawseti(L, -2, 0);
  t->state = ok ? T_DONE : T_FAILED;
  ctx->tasks_alive--;

  push_task_of(L, t->co);
  int tidx = lua_gettop(L);
  lua_pushvalue(L, -2);
  lua_setiuservalue(L, tidx, UV_RESULT);
  wake_joiners(L, tidx);
  lua_pop(L, 2); /* task, result */

  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushthread(t->co);
  lua_xmove(t->co, L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  lua_pop(L, 1);
}

static void report_error(host_ctx *ctx, task *t, const char *prefix) {
  lua_State *L = ctx->L;
  const char *msg = NULL;
  if (lua_type(t->co, -1) == LUA_TSTRING)
    msg = lua_tostring(t->co, -1);
  else
    msg = luaL_tolstring(t->co, -1, NULL);
  luaL_traceback(L, t->co, msg, 0);
  host_log(LOG_ERROR, "%s '%s' %s: %s", t->is_main ? "script" : "task", t->name,
           prefix, lua_tostring(L, -1));
  lua_pop(L, 1);
  lua_pushstring(L, msg); /* what join() reports */
  lua_settop(t->co, 0);
}

static void resume(host_ctx *ctx, task *t) {
  int nargs = t->pending_nargs, nres = 0;
  t->pending_nargs = 0;
  t->state = T_RUNNING;
  ctx->resume_start_ns = uv_hrtime(); /* before running: see watchdog_tick */
  ctx->running = t;
  int st = lua_resume(t->co, ctx->L, nargs, &nres);
  ctx->running = NULL;
  if (ctx->closing)
    return;
  if ((st == LUA_YIELD || st == LUA_OK) && t->stopped) {
    lua_pop(t->co, nres);
    lua_pushfstring(t->co, "%sran for more than %f s without yielding",
                    t->where, ctx->task_limit_s);
    report_error(ctx, t, "stopped");
    finish(ctx, t, 0, 1);
    if (t->is_main)
      host_request_exit(ctx, 1);
  } else if (st == LUA_YIELD) {
    lua_pop(t->co, nres);
    if (t->state == T_RUNNING) /* coroutine.yield(): let others run */
      enqueue(ctx, t);
  } else if (st == LUA_OK) {
    lua_xmove(t->co, ctx->L, nres);
    finish(ctx, t, 1, nres);
  } else {
    report_error(ctx, t, "failed");
    finish(ctx, t, 0, 1);
    if (t->is_main)
      host_request_exit(ctx, 1);
  }
}

static void on_ready(uv_idle_t *idle) {
  task_run_ready(idle->data);
}

void task_run_ready(host_ctx *ctx) {
  uv_idle_t *idle = &ctx->ready_idle;
  task *last = ctx->ready_tail; /* tasks queued now wait for the next turn */
  while (ctx->ready_head && !ctx->closing && !ctx->exiting) {
    task *t = ctx->ready_head;
    ctx->ready_head = t->next_ready;
    if (!ctx->ready_head)
      ctx->ready_tail = NULL;
    resume(ctx, t);
    if (t == last)
      break;
  }
  if (!ctx->ready_head)
    uv_idle_stop(idle);
}

/* ---- waiting ---- */

int task_can_wait(lua_State *L) {
  return lua_isyieldable(L) && task_of(L) != NULL;
}

void task_check_can_wait(lua_State *L, const char *what) {
  if (!task_can_wait(L))
    luaL_error(L,
               "%s: must be called from a task, not from inside a "
               "coroutine, metamethod or iterator of its own",
               what);
}

int task_wait(lua_State *L, task_waiter *w) {
  task_check_can_wait(L, "wait");
  push_task_of(L, L);
  task *t = lua_touserdata(L, -1);
  w->ctx = host_get(L);
  w->id = ++t->wait_id;
  w->ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->state = T_WAITING;
  return lua_yield(L, 0);
}

static task *waiter_task(task_waiter *w) {
  if (w->ref == LUA_NOREF || w->ctx->closing)
    return NULL;
  lua_State *L = w->ctx->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, w->ref);
  task *t = lua_touserdata(L, -1);
  lua_pop(L, 1);
  if (!t || t->state != T_WAITING || t->wait_id != w->id)
    return NULL;
  return t;
}

lua_State *task_waiter_thread(task_waiter *w) {
  task *t = waiter_task(w);
  return t ? t->co : NULL;
}

void task_waiter_cancel(task_waiter *w) {
  if (w->ref != LUA_NOREF && !w->ctx->closing)
    luaL_unref(w->ctx->L, LUA_REGISTRYINDEX, w->ref);
  w->ref = LUA_NOREF;
}

void task_waiter_wake(task_waiter *w, int nargs) {
  task *t = waiter_task(w);
  task_waiter_cancel(w);
  if (!t)
    return;
  t->pending_nargs = nargs;
  enqueue(w->ctx, t);
}

/* ---- creating tasks ---- */

void task_spawn(lua_State *L, int nargs, const char *name) {
  host_ctx *ctx = host_get(L);
  int fidx = lua_gettop(L) - nargs;
  luaL_checktype(L, fidx, LUA_TFUNCTION);
  task *t = lua_newuserdatauv(L, sizeof *t, UV_COUNT);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, TASK_MT);
  int tidx = lua_gettop(L);
  ctx->tasks_started++;
  if (name)
    snprintf(t->name, sizeof t->name, "%s", name);
  else
    snprintf(t->name, sizeof t->name, "task#%u", ctx->tasks_started);

  t->co = lua_newthread(L);
  lua_setiuservalue(L, tidx, UV_THREAD);
  lua_newtable(L);
  lua_setiuservalue(L, tidx, UV_JOINERS);

  lua_getfield(L, LUA_REGISTRYINDEX, TASKS_KEY);
  lua_pushthread(t->co);
  lua_xmove(t->co, L, 1);
  lua_pushvalue(L, tidx);
  lua_rawset(L, -3);
  lua_pop(L, 1);

  /* move function and arguments onto the new thread */
  lua_rotate(L, fidx, 1); /* task object below the function */
  lua_xmove(L, t->co, nargs + 1);
  t->pending_nargs = nargs;
  ctx->tasks_alive++;
  enqueue(ctx, t);
}

void task_start_main(host_ctx *ctx, lua_State *L, int nargs) {
  task_spawn(L, nargs, "main");
  task *t = lua_touserdata(L, -1);
  t->is_main = 1;
  lua_pop(L, 1);
  (void)ctx;
}

int task_count_alive(host_ctx *ctx) {
  return ctx->tasks_alive;
}

/* ---- the watchdog ----
 *
 * A task that behaves costs nothing: its thread has no hook. A ticker
 * (platform.h: a timer of the process's CPU time on POSIX, so an idle host
 * is never woken) looks at the running task from outside; once it has run
 * longer than the limit, the ticker sets a count hook of 1 on the task's
 * thread, as Lua allows from outside the running code, and the hook stops
 * the task. Coroutines that a task creates itself (coroutine.create and
 * .wrap, replaced below) keep a count hook, checked every WATCHDOG_COUNT
 * instructions: the ticker cannot reach them. */

static host_ctx *watched; /* whose tasks the ticker looks at */

static void watchdog(lua_State *L, lua_Debug *ar);

/* The ticker: interrupts the loop's thread (or, on Windows, holds it). */
static void watchdog_tick(void) {
  host_ctx *ctx = watched;
  if (!ctx)
    return;
  task *t = ctx->running;
  if (!t || t->stopped || ctx->task_limit_s <= 0)
    return;
  if ((double)(uv_hrtime() - ctx->resume_start_ns) / 1e9 > ctx->task_limit_s)
    lua_sethook(t->co, watchdog, LUA_MASKCOUNT, 1);
}

/* Ticks a few times per limit, at most once a second. */
static void watchdog_arm(host_ctx *ctx) {
  if (ctx->task_limit_s <= 0) {
    plat_ticker_stop();
    return;
  }
  double period = ctx->task_limit_s / 4;
  if (period > 1)
    period = 1;
  if (period < 0.01)
    period = 0.01;
  int rc = plat_ticker_start(watchdog_tick, period);
  if (rc != 0)
    host_log(LOG_WARN, "the task watchdog cannot start: %s", uv_strerror(rc));
}

static void watchdog_close(void *data) {
  (void)data;
  plat_ticker_stop();
  watched = NULL;
}

/* Runs in a task's thread once the ticker has found it over the limit, and
 * in the coroutines of a task's own every WATCHDOG_COUNT instructions. Once
 * over the limit the task is over: it is yielded for good at the first
 * instruction where its thread can yield. */
static void watchdog(lua_State *L, lua_Debug *ar) {
  (void)ar;
  host_ctx *ctx = host_get(L);
  task *t = ctx->running;
  if (!t)
    return;
  if (!t->stopped) {
    double ran = (double)(uv_hrtime() - ctx->resume_start_ns) / 1e9;
    if (ctx->task_limit_s <= 0 || ran <= ctx->task_limit_s) {
      /* set by a tick during an earlier run: the task behaves again */
      if (L == t->co)
        lua_sethook(L, NULL, 0, 0);
      else if (lua_gethookcount(L) != WATCHDOG_COUNT)
        lua_sethook(L, watchdog, LUA_MASKCOUNT, WATCHDOG_COUNT);
      return;
    }
    t->stopped = 1;
    luaL_where(L, 0);
    snprintf(t->where, sizeof t->where, "%s", lua_tostring(L, -1));
    lua_pop(L, 1);
    /* from now on check at every instruction, in this thread and the
     * task's own, so that it is caught as soon as it can be yielded */
    lua_sethook(L, watchdog, LUA_MASKCOUNT, 1);
    lua_sethook(t->co, watchdog, LUA_MASKCOUNT, 1);
  }
  if (lua_isyieldable(L)) {
    /* a yield from a hook cannot be caught by pcall; in a coroutine of the
     * task's own it hands control back towards the task's thread */
    lua_yield(L, 0);
    return;
  }
  /* below a C function that cannot yield: unwind with an error (raised
   * again at once if a pcall catches it) */
  lua_pushfstring(L, "%sran for more than %f s without yielding", t->where,
                  ctx->task_limit_s);
  lua_error(L);
}

/* coroutine.create, counted (see above) */
static int co_create(lua_State *L) {
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_State *co = lua_newthread(L);
  lua_pushvalue(L, 1);
  lua_xmove(L, co, 1);
  lua_sethook(co, watchdog, LUA_MASKCOUNT, WATCHDOG_COUNT);
  return 1;
}

/* The function coroutine.wrap returns: resumes its coroutine (upvalue 1)
 * and returns what it yields or returns; raises its error, with the
 * caller's position when the error is a string. */
static int co_wrapped(lua_State *L) {
  lua_State *co = lua_tothread(L, lua_upvalueindex(1));
  int nargs = lua_gettop(L), nres;
  if (!lua_checkstack(co, nargs))
    return luaL_error(L, "too many arguments to resume");
  lua_xmove(L, co, nargs);
  int st = lua_resume(co, L, nargs, &nres);
  if (st == LUA_OK || st == LUA_YIELD) {
    if (!lua_checkstack(L, nres + 1)) {
      lua_pop(co, nres);
      return luaL_error(L, "too many results to resume");
    }
    lua_xmove(co, L, nres);
    return nres;
  }
  int cst = lua_status(co);
  if (cst != LUA_OK && cst != LUA_YIELD) /* it died: close its variables */
    cst = lua_resetthread(co);
  lua_xmove(co, L, 1); /* the error */
  if (cst != LUA_ERRMEM && lua_type(L, -1) == LUA_TSTRING) {
    luaL_where(L, 1);
    lua_insert(L, -2);
    lua_concat(L, 2);
  }
  return lua_error(L);
}

static int co_wrap(lua_State *L) {
  co_create(L);
  lua_pushcclosure(L, co_wrapped, 1);
  return 1;
}

void task_install_watchdog(lua_State *L) {
  host_ctx *ctx = host_get(L);
  watched = ctx;
  host_on_close(ctx, watchdog_close, NULL);
  watchdog_arm(ctx);
  if (lua_getglobal(L, "coroutine") == LUA_TTABLE) {
    lua_pushcfunction(L, co_create);
    lua_setfield(L, -2, "create");
    lua_pushcfunction(L, co_wrap);
    lua_setfield(L, -2, "wrap");
  }
  lua_pop(L, 1);
}

/* ---- Lua API ---- */

static int l_spawn(lua_State *L) {
  if (lua_type(L, 1) == LUA_TSTRING) {
    char name[64];
    snprintf(name, sizeof name, "%s", lua_tostring(L, 1));
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_remove(L, 1);
    task_spawn(L, lua_gettop(L) - 1, name);
  } else {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    task_spawn(L, lua_gettop(L) - 1, NULL);
  }
  return 1;
}

static int push_result(lua_State *L, int tidx) {
  lua_getiuservalue(L, tidx, UV_RESULT);
  int res = lua_gettop(L);
  lua_rawgeti(L, res, 0);
  int n = (int)lua_tointeger(L, -1);
  lua_pop(L, 1);
  luaL_checkstack(L, n, "too many results");
  for (int k = 1; k <= n; k++)
    lua_rawgeti(L, res, k);
  return n;
}

static int l_join(lua_State *L) {
  task *t = check_task(L, 1);
  if (t->state == T_DONE || t->state == T_FAILED)
    return push_result(L, 1);
  if (t->co == L)
    return luaL_error(L, "a task cannot join itself");
  task_check_can_wait(L, "task:join");
  lua_getiuservalue(L, 1, UV_JOINERS);
  join_req *j = lua_newuserdatauv(L, sizeof *j, 0);
  j->waiter.ref = LUA_NOREF;
  lua_rawseti(L, -2, luaL_len(L, -2) + 1);
  lua_settop(L, 0);
  return task_wait(L, &j->waiter);
}

/* ---- events: a task waits until another task sets the event ----
 *
 * A pulse, not a latch: set() wakes the tasks waiting at that moment and
 * is not remembered. Each wait may have a timeout (a timer of its own). A
 * waiter is unlinked from its event by whichever comes first: set(), its
 * timeout, or the event's collection; its memory is freed with its timer. */

typedef struct ev_wait {
  task_waiter waiter;
  uv_timer_t timer;
  int has_timer;
  struct ev_wait *next;
  struct event *ev; /* NULL once unlinked */
} ev_wait;

typedef struct event {
  ev_wait *head;
} event;

static void free_ev_wait(uv_handle_t *h) {
  free(h->data);
}

static void ev_unlink(ev_wait *w) {
  if (!w->ev)
    return;
  for (ev_wait **p = &w->ev->head; *p; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      break;
    }
  w->ev = NULL;
}

/* Wake w's task with `result` (or forget it) and release w. */
static void ev_release(ev_wait *w, int wake, int result) {
  lua_State *co = wake ? task_waiter_thread(&w->waiter) : NULL;
  if (co) {
    lua_pushboolean(co, result);
    task_waiter_wake(&w->waiter, 1);
  } else {
    task_waiter_cancel(&w->waiter);
  }
  if (w->has_timer) {
    uv_timer_stop(&w->timer);
    uv_close((uv_handle_t *)&w->timer, free_ev_wait);
  } else {
    free(w);
  }
}

static void on_ev_timeout(uv_timer_t *timer) {
  ev_wait *w = timer->data;
  ev_unlink(w);
  ev_release(w, 1, 0);
}

static event *check_event(lua_State *L) {
  return luaL_checkudata(L, 1, EVENT_MT);
}

static int l_event(lua_State *L) {
  event *e = lua_newuserdatauv(L, sizeof *e, 0);
  e->head = NULL;
  luaL_setmetatable(L, EVENT_MT);
  return 1;
}

/* event:wait([seconds]): true when set() woke it, false after seconds. */
static int l_event_wait(lua_State *L) {
  event *e = check_event(L);
  lua_Number s = luaL_optnumber(L, 2, -1);
  luaL_argcheck(L, lua_isnoneornil(L, 2) || (s >= 0 && s < 1e9), 2,
                "seconds must be >= 0");
  task_check_can_wait(L, "event:wait");
  ev_wait *w = calloc(1, sizeof *w);
  if (!w)
    return luaL_error(L, "out of memory");
  w->waiter.ref = LUA_NOREF;
  if (s >= 0) {
    uv_loop_t *loop = &host_get(L)->loop;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    w->has_timer = 1;
    uv_update_time(loop); /* as host.time.sleep does */
    uv_timer_start(&w->timer, on_ev_timeout, (uint64_t)(s * 1000.0 + 0.5), 0);
  }
  w->ev = e;
  w->next = e->head;
  e->head = w;
  lua_settop(L, 1); /* the event stays on the task's stack while it waits */
  return task_wait(L, &w->waiter);
}

/* event:set(): wakes every task waiting on the event now; returns how
 * many. */
static int l_event_set(lua_State *L) {
  event *e = check_event(L);
  ev_wait *list = e->head;
  e->head = NULL;
  int n = 0;
  while (list) {
    ev_wait *w = list;
    list = w->next;
    w->ev = NULL;
    n += task_waiter_thread(&w->waiter) != NULL;
    ev_release(w, 1, 1);
  }
  lua_pushinteger(L, n);
  return 1;
}

static int l_event_gc(lua_State *L) {
  event *e = check_event(L);
  while (e->head) {
    ev_wait *w = e->head;
    e->head = w->next;
    w->ev = NULL;
    ev_release(w, 0, 0);
  }
  return 0;
}

static int l_status(lua_State *L) {
  lua_pushstring(L, state_names[check_task(L, 1)->state]);
  return 1;
}

static int l_name(lua_State *L) {
  lua_pushstring(L, check_task(L, 1)->name);
  return 1;
}

static int l_tostring(lua_State *L) {
  task *t = check_task(L, 1);
  lua_pushfstring(L, "task '%s' (%s)", t->name, state_names[t->state]);
  return 1;
}

static int l_current(lua_State *L) {
  push_task_of(L, L);
  return 1;
}

static int l_yield(lua_State *L) {
  task_check_can_wait(L, "host.task.yield");
  return lua_yield(L, 0); /* resume() puts a plain yield back on the list */
}

static int l_set_limit(lua_State *L) {
  host_ctx *ctx = host_get(L);
  double old = ctx->task_limit_s;
  lua_Number s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0, 1, "must be >= 0 (0 turns the watchdog off)");
  ctx->task_limit_s = s;
  if (watched == ctx)
    watchdog_arm(ctx); /* the ticker's period follows the limit */
  lua_pushnumber(L, old);
  return 1;
}

static int l_count(lua_State *L) {
  lua_pushinteger(L, host_get(L)->tasks_alive);
  return 1;
}

/* os.exit replacement: stop the loop and let main() close everything. */
static int l_os_exit(lua_State *L) {
  int code;
  if (lua_isboolean(L, 1))
    code = lua_toboolean(L, 1) ? EXIT_SUCCESS : EXIT_FAILURE;
  else
    code = (int)luaL_optinteger(L, 1, EXIT_SUCCESS);
  host_ctx *ctx = host_get(L);
  host_request_exit(ctx, code);
  task *t = task_of(L);
  if (t && lua_isyieldable(L)) {
    t->state = T_WAITING; /* never woken: the host is stopping */
    return lua_yield(L, 0);
  }
  fflush(NULL);
  exit(code);
}

/* host.restart(): end this run like os.exit(0), then main() runs the same
 * script again with the same arguments, in the same process. */
static int l_restart(lua_State *L) {
  host_get(L)->restart = 1;
  lua_settop(L, 0);
  return l_os_exit(L);
}

void host_open_task(lua_State *L) {
  host_ctx *ctx = host_get(L);
  uv_idle_init(&ctx->loop, &ctx->ready_idle);
  ctx->ready_idle.data = ctx;

  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, TASKS_KEY);

  static const luaL_Reg methods[] = {
      {"join", l_join}, {"status", l_status}, {"name", l_name}, {NULL, NULL}};
  luaL_newmetatable(L, TASK_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);

  static const luaL_Reg event_methods[] = {
      {"wait", l_event_wait}, {"set", l_event_set}, {NULL, NULL}};
  luaL_newmetatable(L, EVENT_MT);
  luaL_newlib(L, event_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_event_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);

  static const luaL_Reg funcs[] = {
      {"spawn", l_spawn}, {"current", l_current},
      {"yield", l_yield}, {"set_limit", l_set_limit},
      {"count", l_count}, {"event", l_event},
      {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "task");

  lua_pushcfunction(L, l_os_exit);
  lua_setfield(L, -2, "exit");
  lua_pushcfunction(L, l_restart);
  lua_setfield(L, -2, "restart");
  lua_getglobal(L, "os");
  lua_pushcfunction(L, l_os_exit);
  lua_setfield(L, -2, "exit");
  lua_pop(L, 1);
}
