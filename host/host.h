/* host.h: the state shared by every binding of goliat-host.
 *
 * One host_ctx exists per process. It owns the libuv loop and the main Lua
 * state; every Lua thread can reach it through host_get(). Bindings register
 * themselves with host_open_*() functions (declared in their own headers) and
 * may ask to be told when the host shuts down (host_on_close).
 */
#ifndef GOLIAT_HOST_H
#define GOLIAT_HOST_H

#include <lauxlib.h>
#include <lua.h>
#include <uv.h>

#include "log.h"

/* goliat-host --version, host.version and the HTTP User-Agent: the VERSION
 * of project() in CMakeLists.txt, passed on the compiler's command line */
#ifndef HOST_VERSION
#error "HOST_VERSION is not defined: build with CMakeLists.txt"
#endif

typedef void (*host_close_fn)(void *data);

typedef struct host_close_hook {
  host_close_fn fn;
  void *data;
  struct host_close_hook *next;
} host_close_hook;

typedef struct host_ctx {
  uv_loop_t loop;
  lua_State *L;        /* the main state */
  int exit_code;       /* what the process returns */
  int closing;         /* set once shutdown has begun: wake nothing */
  double task_limit_s; /* longest a task may run without yielding */
  /* read by the watchdog's ticker, which interrupts the loop's thread */
  volatile uint64_t resume_start_ns; /* uv_hrtime() when it resumed */
  struct task *volatile running;     /* the task being resumed, or NULL */
  host_close_hook *close_hooks;
  uv_idle_t ready_idle; /* runs ready tasks; active only while some are */
  struct task *ready_head, *ready_tail;
  int tasks_alive;        /* tasks not yet finished */
  unsigned tasks_started; /* for default task names */
  int exiting;            /* os.exit() was called */
  int restart;            /* host.restart() was called: run the script again */
  struct fs_queue *fs_queue; /* host.fs operations waiting to run (fs.c) */
} host_ctx;

/* The context of the host that owns L (any thread of it). */
static inline host_ctx *host_get(lua_State *L) {
  return *(host_ctx **)lua_getextraspace(L);
}

/* Call fn(data) when the host shuts down, before the Lua state is closed.
 * Hooks run in reverse order of registration. */
void host_on_close(host_ctx *ctx, host_close_fn fn, void *data);

/* Ask the host to stop: the loop ends after the current callback and the
 * process exits with code. Safe to call from any binding. */
void host_request_exit(host_ctx *ctx, int code);

/* Optional fields of an options table at index idx (absent or nil gives
 * the default; a value of the wrong type raises naming the field). */
const char *host_opt_string(lua_State *L, int idx, const char *field,
                            const char *def);
double host_opt_number(lua_State *L, int idx, const char *field, double def);
int host_opt_boolean(lua_State *L, int idx, const char *field, int def);

/* Push nil, message and (when code is not NULL) a code string; returns the
 * number of values pushed, so a binding can `return host_fail(...)`. */
HOST_PRINTF(3, 4)
int host_fail(lua_State *L, const char *code, const char *fmt, ...);

/* Push nil, libuv's message for err and libuv's error name; returns 3. */
int host_fail_uv(lua_State *L, int err, const char *what);

/* A malloc'd copy of s, or NULL when out of memory (the caller frees it). */
char *host_strdup(const char *s);

/* Each binding adds its functions to the table at the top of the stack. */
void host_open_task(lua_State *L);
void host_open_time(lua_State *L);
void host_open_log(lua_State *L);
void host_open_fs(lua_State *L);
void host_open_sys(lua_State *L);
void host_open_proc(lua_State *L);
void host_open_http_client(lua_State *L);
void host_open_http_server(lua_State *L);
void host_open_json(lua_State *L);

#endif
