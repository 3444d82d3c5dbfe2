/* task.h: Lua coroutines run as tasks on the libuv loop.
 *
 * A binding that must wait (a timer, an HTTP reply, a child's exit) calls
 * task_wait() from the Lua function that the task called, and returns what
 * it returns. When the event arrives the binding checks that the task is
 * still waiting (task_waiter_thread), pushes its results on that thread and
 * calls task_waiter_wake(). The waiter holds a reference to the task, so the
 * task cannot be collected while an operation is outstanding.
 *
 *   static int l_sleep(lua_State *L) {
 *     req = ...; start the timer;
 *     return task_wait(L, &req->waiter);   // yields; results come later
 *   }
 *   static void on_timer(uv_timer_t *t) {
 *     lua_State *co = task_waiter_thread(&req->waiter);
 *     if (co) task_waiter_wake(&req->waiter, 0);
 *     else task_waiter_cancel(&req->waiter);
 *   }
 */
#ifndef GOLIAT_TASK_H
#define GOLIAT_TASK_H

#include "host.h"

typedef struct task_waiter {
  int ref;     /* registry reference to the task's userdata, or LUA_NOREF */
  unsigned id; /* which wait of that task this is */
  host_ctx *ctx;
} task_waiter;

/* Whether L is a task that may wait (task_wait would not raise). */
int task_can_wait(lua_State *L);

/* Raise unless L is a task that may wait (what names the calling binding). */
void task_check_can_wait(lua_State *L, const char *what);

/* Suspend the calling task until the waiter is woken. Only from a C
 * function called directly by Lua; raises when L is not a task. */
int task_wait(lua_State *L, task_waiter *w);

/* The waiting thread, to push results on; NULL when the host is closing or
 * the task no longer waits for this waiter. */
lua_State *task_waiter_thread(task_waiter *w);

/* Resume the task with the nargs values on top of its stack. */
void task_waiter_wake(task_waiter *w, int nargs);

/* Forget the waiter without waking anything (releases the reference). */
void task_waiter_cancel(task_waiter *w);

/* Start a new task named name (NULL for a default name) running the
 * function at index -(nargs+1) with the nargs values above it as arguments.
 * Pops them and pushes the task object. The task first runs on the next
 * turn of the loop, never inside the caller. */
void task_spawn(lua_State *L, int nargs, const char *name);

/* Run the main chunk (function at the top of L) as the first task. */
void task_start_main(host_ctx *ctx, lua_State *L, int nargs);

/* Number of tasks not yet finished. */
int task_count_alive(host_ctx *ctx);

/* Run the tasks that are ready now (those made ready meanwhile wait for
 * the next turn), as the loop's idle phase does; for a loop callback that
 * has just woken tasks and would rather not wait a turn of the loop. */
void task_run_ready(host_ctx *ctx);

/* Start the watchdog that stops tasks running too long without yielding
 * (task.c: a ticker from outside, no hook on a task that behaves), and
 * make coroutine.create and coroutine.wrap give the coroutines a task makes
 * of its own a counting hook. */
void task_install_watchdog(lua_State *L);

#endif
