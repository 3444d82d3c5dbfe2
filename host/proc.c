/* proc.c: host.proc: child processes and their whole trees.
 *
 * A child is spawned (no shell) as the root of a tree the host can stop as a
 * whole (platform.h). Its exit arrives through the platform's exit callback
 * on the loop, so it is seen at once. The C state lives in a malloc'd struct
 * shared by the Lua object and the platform's watch of the child; it is
 * freed when both are gone.
 */
#include "host.h"
#include "log.h"
#include "platform.h"
#include "task.h"

#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define PROC_MT "host.process"
#define POLL_MS 50   /* while terminating: how often the tree is checked */
#define WATCH_MS 500 /* how often an attached process is checked */

typedef struct waiter_node {
  task_waiter w;
  struct waiter_node *next;
} waiter_node;

typedef struct proc {
  plat_child *child; /* while its watch is open */
  host_ctx *ctx;
  int refs; /* the Lua object + the child's watch (or the attach timer) */
  int pid;
  int exited;
  int64_t status;
  int term_signal;
  plat_tree *tree;
  waiter_node *waiters;  /* wait() and terminate() callers */
  uv_timer_t *term_poll; /* malloc'd; while terminate() is under way */
  uint64_t kill_at_ms;   /* loop time at which the tree is killed */
  int killed;
  int own_group;     /* leads its own tree (the default) */
  int attached;      /* not our child: found by pid (host.proc.attach) */
  uv_timer_t *watch; /* attached only: checks whether it still runs */
  struct proc *next_live, *prev_live;
} proc;

typedef struct {
  proc *p;
} proc_ud;

static proc *live_procs; /* whose handle is not yet closed */

static const struct {
  const char *name;
  int num;
} signals[] = {
    {"SIGTERM", SIGTERM},   {"SIGINT", SIGINT},   {"SIGKILL", 9},
    {"SIGABRT", SIGABRT},   {"SIGSEGV", SIGSEGV}, {"SIGFPE", SIGFPE},
    {"SIGILL", SIGILL},
#ifndef _WIN32
    {"SIGHUP", SIGHUP},     {"SIGQUIT", SIGQUIT}, {"SIGBUS", SIGBUS},
    {"SIGPIPE", SIGPIPE},   {"SIGALRM", SIGALRM}, {"SIGUSR1", SIGUSR1},
    {"SIGUSR2", SIGUSR2},   {"SIGCONT", SIGCONT}, {"SIGSTOP", SIGSTOP},
#endif
#ifdef SIGBREAK
    {"SIGBREAK", SIGBREAK},
#endif
};

static const char *signal_name(int num) {
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
    if (signals[i].num == num)
      return signals[i].name;
  return NULL;
}

static int signal_number(const char *name) {
  for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
    if (strcmp(signals[i].name, name) == 0)
      return signals[i].num;
  return -1;
}

static void proc_unref(proc *p) {
  if (--p->refs > 0)
    return;
  plat_tree_free(p->tree);
  free(p);
}

/* The child's watch (or an attached process's timer) is closed. */
static void on_closed(proc *p) {
  if (p->prev_live)
    p->prev_live->next_live = p->next_live;
  else if (live_procs == p)
    live_procs = p->next_live;
  if (p->next_live)
    p->next_live->prev_live = p->prev_live;
  proc_unref(p);
}

static void on_child_closed(void *data) {
  on_closed(data);
}

static void on_watch_closed(uv_handle_t *h) {
  proc *p = h->data;
  free(h);
  p->watch = NULL;
  on_closed(p);
}

static void close_child(proc *p) {
  if (!p->child)
    return;
  plat_child_close(p->child, on_child_closed);
  p->child = NULL;
}

static void free_term_poll(uv_handle_t *h) {
  proc *p = h->data;
  free(h);
  proc_unref(p);
}

static void stop_term_poll(proc *p) {
  if (!p->term_poll)
    return;
  uv_close((uv_handle_t *)p->term_poll, free_term_poll);
  p->term_poll = NULL;
}

/* Push code, signal as wait() returns them (both nil when unknown: an
 * attached process is not ours to reap). */
static int push_exit(lua_State *L, proc *p) {
  if (p->attached) {
    lua_pushnil(L);
    lua_pushnil(L);
    return 2;
  }
  const char *sig = p->term_signal ? signal_name(p->term_signal) : NULL;
  if (p->term_signal) {
    lua_pushnil(L);
    if (sig)
      lua_pushstring(L, sig);
    else
      lua_pushfstring(L, "SIG%d", p->term_signal);
  } else {
    lua_pushinteger(L, (lua_Integer)p->status);
    lua_pushnil(L);
  }
  return 2;
}

static void wake_all(proc *p) {
  waiter_node *n = p->waiters;
  p->waiters = NULL;
  while (n) {
    waiter_node *next = n->next;
    lua_State *co = task_waiter_thread(&n->w);
    if (co) {
      push_exit(co, p);
      task_waiter_wake(&n->w, 2);
    } else {
      task_waiter_cancel(&n->w);
    }
    free(n);
    n = next;
  }
}

/* ---- the tree, or the single process when it has no group of its own ---- */

static plat_child *child_of(proc *p) {
  return p->child;
}

static int do_signal(proc *p, int signum) {
  if (p->own_group)
    return plat_tree_signal(p->tree, child_of(p), p->pid, signum);
  return uv_kill(p->pid, signum);
}

static int do_kill(proc *p) {
  if (p->own_group)
    return plat_tree_kill(p->tree, child_of(p), p->pid);
  return uv_kill(p->pid, SIGKILL);
}

static int do_terminate(proc *p) {
  if (p->own_group)
    return plat_tree_terminate(p->tree, child_of(p), p->pid);
  return uv_kill(p->pid, SIGTERM);
}

static int tree_alive(proc *p) {
  if (p->own_group)
    return plat_tree_alive(p->tree, p->pid);
  return !p->exited;
}

/* Done when the root has exited and nothing of its tree is left, or it was
 * killed (a killed tree is gone even if the kernel still reaps it). */
static int tree_done(proc *p) {
  return p->exited && (p->killed || !tree_alive(p));
}

static void stop_watch(proc *p) {
  if (p->watch && !uv_is_closing((uv_handle_t *)p->watch))
    uv_close((uv_handle_t *)p->watch, on_watch_closed);
}

/* The root has exited: wake the waiters unless a terminate() still waits
 * for the rest of the tree. */
static void note_exit(proc *p) {
  if (p->ctx->closing)
    return;
  host_log(LOG_DEBUG, "process %d exited (status %d, signal %d)", p->pid,
           (int)p->status, p->term_signal);
  if (!p->term_poll || tree_done(p)) {
    stop_term_poll(p);
    wake_all(p);
  }
}

static void on_child_exit(void *data, int64_t status, int term_signal) {
  proc *p = data;
  p->exited = 1;
  p->status = status;
  p->term_signal = term_signal;
  close_child(p);
  note_exit(p);
}

static void on_watch(uv_timer_t *t) {
  proc *p = t->data;
  if (p->exited || plat_pid_alive(p->pid))
    return;
  p->exited = 1;
  stop_watch(p);
  note_exit(p);
}

static void on_term_poll(uv_timer_t *t) {
  proc *p = t->data;
  if (!p->killed && uv_now(t->loop) >= p->kill_at_ms && tree_alive(p)) {
    host_log(LOG_WARN,
             "process tree %d still alive after the grace period: "
             "killing it",
             p->pid);
    do_kill(p);
    p->killed = 1;
  }
  if (tree_done(p)) {
    stop_term_poll(p);
    wake_all(p);
  }
}

/* ---- spawning ---- */

typedef struct spawn_args {
  char **argv;
  char **env;
  int out_fd, err_fd; /* files we opened, or -1 */
} spawn_args;

static void free_strv(char **v) {
  if (!v)
    return;
  for (char **s = v; *s; s++)
    free(*s);
  free(v);
}

static void close_fd(int fd) {
  if (fd < 0)
    return;
  uv_fs_t req;
  uv_fs_close(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
}

static void free_args(spawn_args *a) {
  free_strv(a->argv);
  free_strv(a->env);
  close_fd(a->out_fd);
  close_fd(a->err_fd);
}

static char *join_env(const char *k, const char *v) {
  size_t kl = strlen(k), vl = strlen(v);
  char *s = malloc(kl + vl + 2);
  if (!s)
    return NULL;
  memcpy(s, k, kl);
  s[kl] = '=';
  memcpy(s + kl + 1, v, vl + 1);
  return s;
}

/* Raise unless opts.argv is a non-empty array of strings; returns its
 * length. */
static int check_argv(lua_State *L, int opts) {
  if (lua_getfield(L, opts, "argv") != LUA_TTABLE)
    luaL_error(L, "host.proc.spawn: argv must be an array of strings");
  int n = (int)luaL_len(L, -1);
  if (n < 1)
    luaL_error(L, "host.proc.spawn: argv must not be empty");
  for (int i = 1; i <= n; i++) {
    if (lua_rawgeti(L, -1, i) != LUA_TSTRING)
      luaL_error(L, "host.proc.spawn: argv[%d] must be a string", i);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return n;
}

/* Raise unless opts.env is nil or a table of string -> string. */
static void check_env(lua_State *L, int opts) {
  int t = lua_getfield(L, opts, "env");
  if (t != LUA_TNIL && t != LUA_TTABLE)
    luaL_error(L, "host.proc.spawn: env must be a table");
  if (t == LUA_TTABLE) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "host.proc.spawn: env names and values must be "
                      "strings");
      const char *k = lua_tostring(L, -2);
      if (!*k || strchr(k, '='))
        luaL_error(L, "host.proc.spawn: invalid env name '%s'", k);
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

static char **build_argv(lua_State *L, int opts, int n) {
  char **argv = calloc((size_t)n + 1, sizeof *argv);
  if (!argv)
    return NULL;
  lua_getfield(L, opts, "argv");
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, -1, i + 1);
    argv[i] = host_strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
    if (!argv[i]) {
      lua_pop(L, 1);
      free_strv(argv);
      return NULL;
    }
  }
  lua_pop(L, 1);
  return argv;
}

/* The host's environment with opts.env laid over it, as "K=V" strings.
 * Names are compared exactly (case-insensitively on Windows). */
static int overridden(lua_State *L, int env, const char *name) {
  int found;
#ifdef _WIN32
  found = 0;
  lua_pushnil(L);
  while (!found && lua_next(L, env)) {
    found = _stricmp(lua_tostring(L, -2), name) == 0;
    lua_pop(L, 1);
  }
  if (found)
    lua_pop(L, 1);
#else
  found = lua_getfield(L, env, name) != LUA_TNIL;
  lua_pop(L, 1);
#endif
  return found;
}

static char **build_env(lua_State *L, int opts) {
  if (lua_getfield(L, opts, "env") != LUA_TTABLE) {
    lua_pop(L, 1);
    return NULL; /* inherit as is */
  }
  int env = lua_gettop(L);
  uv_env_item_t *items = NULL;
  int count = 0;
  if (uv_os_environ(&items, &count) != 0)
    count = 0;
  size_t extra = 0;
  lua_pushnil(L);
  while (lua_next(L, env)) {
    extra++;
    lua_pop(L, 1);
  }
  char **out = calloc((size_t)count + extra + 1, sizeof *out);
  size_t k = 0;
  for (int i = 0; out && i < count; i++)
    if (!overridden(L, env, items[i].name))
      out[k++] = join_env(items[i].name, items[i].value);
  lua_pushnil(L);
  while (out && lua_next(L, env)) {
    out[k++] = join_env(lua_tostring(L, -2), lua_tostring(L, -1));
    lua_pop(L, 1);
  }
  if (items)
    uv_os_free_environ(items, count);
  lua_pop(L, 1);
  return out;
}

/* "inherit" | "null" | "stdout" (stderr only) | a path */
static const char *check_stdio(lua_State *L, int opts, const char *field) {
  const char *v = host_opt_string(L, opts, field, "inherit");
  if (strcmp(v, "stdout") == 0 && strcmp(field, "stdout") == 0)
    luaL_error(L, "host.proc.spawn: stdout cannot be \"stdout\"");
  return v;
}

/* Never through a link planted at path: the host may run as root and write
 * in folders that others can write (UV_FS_O_NOFOLLOW is 0 on Windows,
 * where creating a link needs a privilege). */
static int open_output(const char *path) {
  uv_fs_t req;
  int fd = uv_fs_open(NULL, &req, path,
                      UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_APPEND |
                          UV_FS_O_NOFOLLOW,
                      0644, NULL);
  uv_fs_req_cleanup(&req);
  return fd;
}

static int set_stdio(uv_stdio_container_t *c, const char *v, int std_fd,
                     int *opened) {
  if (strcmp(v, "inherit") == 0) {
    c->flags = UV_INHERIT_FD;
    c->data.fd = std_fd;
  } else if (strcmp(v, "null") == 0) {
    c->flags = UV_IGNORE;
  } else {
    int fd = open_output(v);
    if (fd < 0)
      return fd;
    *opened = fd;
    c->flags = UV_INHERIT_FD;
    c->data.fd = fd;
  }
  return 0;
}

static void link_live(proc *p) {
  p->next_live = live_procs;
  p->prev_live = NULL;
  if (live_procs)
    live_procs->prev_live = p;
  live_procs = p;
}

static int start(proc *p, spawn_args *a, const char *cwd, const char *out,
                 const char *err) {
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  int rc = set_stdio(&stdio[1], out, 1, &a->out_fd);
  if (rc == 0 && strcmp(err, "stdout") == 0)
    stdio[2] = stdio[1];
  else if (rc == 0)
    rc = set_stdio(&stdio[2], err, 2, &a->err_fd);
  if (rc < 0)
    return rc;
  uv_process_options_t o;
  memset(&o, 0, sizeof o);
  o.file = a->argv[0];
  o.args = a->argv;
  o.env = a->env;
  o.cwd = cwd;
  o.flags = UV_PROCESS_WINDOWS_HIDE;
  o.stdio_count = 3;
  o.stdio = stdio;
  rc = plat_spawn(&p->ctx->loop, &o, p->own_group, on_child_exit, p, &p->child,
                  &p->tree);
  if (rc < 0)
    return rc;
  p->pid = plat_child_pid(p->child);
  p->refs++;
  link_live(p);
  return 0;
}

/* Push a new process object; its C state starts empty. */
static proc *new_proc(lua_State *L) {
  proc_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->p = NULL;
  luaL_setmetatable(L, PROC_MT);
  proc *p = calloc(1, sizeof *p);
  if (!p)
    luaL_error(L, "out of memory");
  p->ctx = host_get(L);
  p->refs = 1;
  ud->p = p;
  return p;
}

/* host.proc.spawn(opts) -> process | nil, msg, code */
static int l_spawn(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = check_argv(L, 1);
  check_env(L, 1);
  const char *cwd = host_opt_string(L, 1, "cwd", NULL);
  const char *out = check_stdio(L, 1, "stdout");
  const char *err = check_stdio(L, 1, "stderr");
  int own_group = host_opt_boolean(L, 1, "new_group", 1);

  proc *p = new_proc(L);
  p->own_group = own_group;

  /* from here on nothing raises until the temporaries are freed */
  spawn_args a = {build_argv(L, 1, n), build_env(L, 1), -1, -1};
  int rc = a.argv ? start(p, &a, cwd, out, err) : UV_ENOMEM;
  free_args(&a);
  if (rc < 0) {
    lua_getfield(L, 1, "argv");
    lua_rawgeti(L, -1, 1);
    return host_fail(L, uv_err_name(rc), "cannot start '%s': %s",
                     lua_tostring(L, -1), uv_strerror(rc));
  }
  lua_pushvalue(L, -1);
  return 1;
}

/* ---- methods ---- */

static proc *check_proc(lua_State *L) {
  proc_ud *ud = luaL_checkudata(L, 1, PROC_MT);
  if (!ud->p)
    luaL_error(L, "process object is not usable (it failed to start)");
  return ud->p;
}

static int add_waiter(lua_State *L, proc *p) {
  waiter_node *n = malloc(sizeof *n);
  if (!n)
    return luaL_error(L, "out of memory");
  n->w.ref = LUA_NOREF;
  n->next = p->waiters;
  p->waiters = n;
  return task_wait(L, &n->w);
}

static int m_wait(lua_State *L) {
  proc *p = check_proc(L);
  if (p->exited && !p->term_poll)
    return push_exit(L, p);
  task_check_can_wait(L, "process:wait");
  return add_waiter(L, p);
}

static int m_running(lua_State *L) {
  lua_pushboolean(L, !check_proc(L)->exited);
  return 1;
}

static int m_pid(lua_State *L) {
  lua_pushinteger(L, check_proc(L)->pid);
  return 1;
}

static int m_signal(lua_State *L) {
  proc *p = check_proc(L);
  const char *name = luaL_checkstring(L, 2);
  int num = signal_number(name);
  luaL_argcheck(L, num >= 0, 2, "unknown signal name");
  int rc = do_signal(p, num);
  if (rc != 0)
    return host_fail_uv(L, rc, "signal");
  lua_pushboolean(L, 1);
  return 1;
}

static int m_kill(lua_State *L) {
  proc *p = check_proc(L);
  int rc = do_kill(p);
  if (rc != 0 && rc != UV_ESRCH)
    return host_fail_uv(L, rc, "kill");
  p->killed = 1;
  lua_pushboolean(L, 1);
  return 1;
}

static int m_terminate(lua_State *L) {
  proc *p = check_proc(L);
  lua_Number grace = luaL_optnumber(L, 2, 10);
  luaL_argcheck(L, grace >= 0, 2, "grace must be >= 0");
  task_check_can_wait(L, "process:terminate");
  if (tree_done(p))
    return push_exit(L, p);
  if (!p->term_poll) {
    uv_timer_t *t = malloc(sizeof *t);
    if (!t)
      return luaL_error(L, "out of memory");
    uv_timer_init(&p->ctx->loop, t);
    t->data = p;
    p->refs++; /* released when the timer is closed */
    p->term_poll = t;
    /* the task may have run since this turn began: count from now */
    uv_update_time(&p->ctx->loop);
    p->kill_at_ms = uv_now(&p->ctx->loop) + (uint64_t)(grace * 1000.0);
    uv_timer_start(t, on_term_poll, POLL_MS, POLL_MS);
    do_terminate(p);
  }
  return add_waiter(L, p);
}

static int m_gc(lua_State *L) {
  proc_ud *ud = luaL_checkudata(L, 1, PROC_MT);
  if (ud->p) {
    proc *p = ud->p;
    ud->p = NULL;
    proc_unref(p);
  }
  return 0;
}

static int m_tostring(lua_State *L) {
  proc_ud *ud = luaL_checkudata(L, 1, PROC_MT);
  if (!ud->p)
    lua_pushliteral(L, "process (not started)");
  else
    lua_pushfstring(L, "process %d (%s)", ud->p->pid,
                    ud->p->exited ? "exited" : "running");
  return 1;
}

static int m_index(lua_State *L) {
  const char *k = luaL_checkstring(L, 2);
  if (strcmp(k, "pid") == 0)
    return m_pid(L);
  lua_getmetatable(L, 1);
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -1, k);
  return 1;
}

/* host.proc.attach(pid) -> process | nil, msg, code: a process that is not
 * our child (one started by an earlier agent), leading its own tree. Its
 * end is noticed by checking every WATCH_MS; its exit code is unknown. */
static int l_attach(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0 && pid <= INT32_MAX, 1, "not a process id");
  if (!plat_pid_alive((int)pid))
    return host_fail(L, "ESRCH", "process %d is not running", (int)pid);
  proc *p = new_proc(L);
  p->pid = (int)pid;
  p->attached = 1;
  p->own_group = 1;
  p->tree = plat_tree_find(p->pid);
  p->watch = malloc(sizeof *p->watch);
  if (!p->watch)
    return luaL_error(L, "out of memory");
  uv_timer_init(&p->ctx->loop, p->watch);
  p->watch->data = p;
  uv_timer_start(p->watch, on_watch, WATCH_MS, WATCH_MS);
  p->refs++; /* released when the watch timer is closed */
  link_live(p);
  return 1;
}

/* host.proc.start_time(pid) -> number | nil, msg, code: when that process
 * started, in a platform unit; tells a reused pid from the original. */
static int l_start_time(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0 && pid <= INT32_MAX, 1, "not a process id");
  long long t;
  int rc = plat_pid_start_time((int)pid, &t);
  if (rc != 0)
    return host_fail_uv(L, rc, "start_time");
  lua_pushinteger(L, (lua_Integer)t);
  return 1;
}

/* host.proc.alive(pid) -> boolean (a zombie is not alive) */
static int l_alive(lua_State *L) {
  lua_Integer pid = luaL_checkinteger(L, 1);
  luaL_argcheck(L, pid > 0 && pid <= INT32_MAX, 1, "not a process id");
  lua_pushboolean(L, plat_pid_alive((int)pid));
  return 1;
}

/* host.proc.keep_tree() -> true | nil, msg, code: this process keeps what
 * it starts (platform.h, plat_keep_tree): on Linux, orphaned descendants
 * are re-parented to it (see host.proc.orphans); on Windows, the Job
 * Object it was started in lasts as long as it does. */
static int l_keep_tree(lua_State *L) {
  int rc = plat_keep_tree();
  if (rc != 0)
    return host_fail_uv(L, rc, "keep_tree");
  lua_pushboolean(L, 1);
  return 1;
}

/* host.proc.orphans([signal]) -> count | nil, msg, code: how many
 * descendants this process adopted (after host.proc.keep_tree) still run;
 * those that ended are reaped, and `signal` is sent to the others. Its own
 * children from host.proc.spawn are not orphans. Always 0 on Windows, where
 * a tree's Job Object holds every descendant. */
static int l_orphans(lua_State *L) {
  int signum = 0;
  if (!lua_isnoneornil(L, 1)) {
    signum = signal_number(luaL_checkstring(L, 1));
    luaL_argcheck(L, signum >= 0, 1, "unknown signal name");
  }
  size_t n = 0, i = 0;
  for (proc *p = live_procs; p; p = p->next_live)
    n++;
  int *own = malloc((n ? n : 1) * sizeof *own);
  if (!own)
    return luaL_error(L, "out of memory");
  for (proc *p = live_procs; p; p = p->next_live)
    if (!p->attached)
      own[i++] = p->pid;
  int rc = plat_orphans(own, i, signum);
  free(own);
  if (rc < 0)
    return host_fail_uv(L, rc, "orphans");
  lua_pushinteger(L, rc);
  return 1;
}

/* At shutdown: stop watching children (they keep running) and free the
 * handles; the Lua objects are freed by lua_close. */
static void on_host_close(void *data) {
  (void)data;
  for (proc *p = live_procs; p; p = p->next_live) {
    stop_term_poll(p);
    for (waiter_node *n = p->waiters, *next; n; n = next) {
      next = n->next;
      free(n);
    }
    p->waiters = NULL;
    if (p->attached)
      stop_watch(p);
    else
      close_child(p);
  }
}

void host_open_proc(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"wait", m_wait},           {"running", m_running}, {"signal", m_signal},
      {"terminate", m_terminate}, {"kill", m_kill},       {NULL, NULL}};
  luaL_newmetatable(L, PROC_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "methods");
  lua_pushcfunction(L, m_index);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, m_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, m_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  host_on_close(host_get(L), on_host_close, NULL);

  static const luaL_Reg funcs[] = {{"spawn", l_spawn},
                                   {"attach", l_attach},
                                   {"start_time", l_start_time},
                                   {"alive", l_alive},
                                   {"keep_tree", l_keep_tree},
                                   {"orphans", l_orphans},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "proc");
}
