/* sys.c: host.sys: environment, machine facts and signal handlers. */
#include "host.h"
#include "log.h"
#include "platform.h"
#include "task.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>

#define SIGNAL_MT "host.signal"
#define SIGNALS_KEY "host.signals" /* registry: handle -> true while open */

/* host.sys.getenv(name) -> string | nil */
static int l_getenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  char small[256];
  size_t size = sizeof small;
  int rc = uv_os_getenv(name, small, &size);
  if (rc == UV_ENOBUFS) {
    char *big = malloc(size);
    if (!big)
      return luaL_error(L, "out of memory");
    rc = uv_os_getenv(name, big, &size);
    if (rc == 0)
      lua_pushstring(L, big);
    free(big);
    return rc == 0 ? 1 : 0;
  }
  if (rc != 0)
    return 0; /* unset */
  lua_pushstring(L, small);
  return 1;
}

/* host.sys.setenv(name, value|nil) -> true | nil, msg, code */
static int l_setenv(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  const char *value = luaL_optstring(L, 2, NULL);
  luaL_argcheck(L, *name && !strchr(name, '='), 1, "invalid variable name");
  int rc = value ? uv_os_setenv(name, value) : uv_os_unsetenv(name);
  if (rc != 0)
    return host_fail_uv(L, rc, name);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.sys.environ() -> {name = value} */
static int l_environ(lua_State *L) {
  uv_env_item_t *items;
  int count;
  int rc = uv_os_environ(&items, &count);
  if (rc != 0)
    return host_fail_uv(L, rc, "environ");
  lua_createtable(L, 0, count);
  for (int i = 0; i < count; i++) {
    lua_pushstring(L, items[i].value);
    lua_setfield(L, -2, items[i].name);
  }
  uv_os_free_environ(items, count);
  return 1;
}

static int l_hostname(lua_State *L) {
  char buf[UV_MAXHOSTNAMESIZE];
  size_t size = sizeof buf;
  int rc = uv_os_gethostname(buf, &size);
  if (rc != 0)
    return host_fail_uv(L, rc, "hostname");
  lua_pushstring(L, buf);
  return 1;
}

/* host.sys.cwd() -> absolute path of the current directory */
static int l_cwd(lua_State *L) {
  char buf[4096];
  size_t size = sizeof buf;
  int rc = uv_cwd(buf, &size);
  if (rc != 0)
    return host_fail_uv(L, rc, "cwd");
  lua_pushstring(L, buf);
  return 1;
}

/* host.sys.exepath() -> absolute path of the running goliat-host */
static int l_exepath(lua_State *L) {
  char buf[4096];
  size_t size = sizeof buf;
  int rc = uv_exepath(buf, &size);
  if (rc != 0)
    return host_fail_uv(L, rc, "exepath");
  lua_pushlstring(L, buf, size);
  return 1;
}

static int l_pid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_os_getpid());
  return 1;
}

/* host.sys.random(n): n bytes from the system's secure random source
 * (getrandom, /dev/urandom; RtlGenRandom on Windows). */
static int l_random(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= 256, 1, "must be from 1 to 256");
  unsigned char buf[256];
  int rc = uv_random(NULL, NULL, buf, (size_t)n, 0, NULL);
  if (rc != 0)
    return luaL_error(L, "host.sys.random: %s", uv_strerror(rc));
  lua_pushlstring(L, (const char *)buf, (size_t)n);
  return 1;
}

static int l_cpu_count(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_available_parallelism());
  return 1;
}

static int l_total_memory(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)uv_get_total_memory());
  return 1;
}

static void push_address(lua_State *L, const uv_interface_address_t *a) {
  char ip[64] = "";
  int inet6 = a->address.address4.sin_family == AF_INET6;
  if (inet6)
    uv_ip6_name(&a->address.address6, ip, sizeof ip);
  else
    uv_ip4_name(&a->address.address4, ip, sizeof ip);
  lua_createtable(L, 0, 4);
  lua_pushstring(L, a->name);
  lua_setfield(L, -2, "name");
  lua_pushstring(L, ip);
  lua_setfield(L, -2, "address");
  lua_pushstring(L, inet6 ? "inet6" : "inet");
  lua_setfield(L, -2, "family");
  lua_pushboolean(L, a->is_internal);
  lua_setfield(L, -2, "internal");
}

/* host.sys.interfaces() -> {{name, address, family, internal}, ...} */
static int l_interfaces(lua_State *L) {
  uv_interface_address_t *addrs;
  int count;
  int rc = uv_interface_addresses(&addrs, &count);
  if (rc != 0)
    return host_fail_uv(L, rc, "interfaces");
  lua_createtable(L, count, 0);
  for (int i = 0; i < count; i++) {
    push_address(L, &addrs[i]);
    lua_rawseti(L, -2, i + 1);
  }
  uv_free_interface_addresses(addrs, count);
  return 1;
}

/* host.sys.boot_id() -> string | nil, msg, code */
static int l_boot_id(lua_State *L) {
  char buf[512];
  int rc = plat_boot_id(buf, sizeof buf);
  if (rc != 0)
    return host_fail(L, uv_err_name(rc), "boot_id: %s", buf);
  lua_pushstring(L, buf);
  return 1;
}

/* host.sys.session_id([pid]) -> id, console | nil, msg, code */
static int l_session_id(lua_State *L) {
  lua_Integer pid = luaL_optinteger(L, 1, 0);
  luaL_argcheck(L, pid >= 0 && pid <= INT32_MAX, 1, "invalid pid");
  unsigned long id;
  int console;
  int rc = plat_session_id((int)pid, &id, &console);
  if (rc == UV_ENOSYS)
    return host_fail(L, uv_err_name(rc),
                     "session_id: no Windows sessions on this platform");
  if (rc != 0)
    return host_fail_uv(L, rc, "session_id");
  lua_pushinteger(L, (lua_Integer)id);
  lua_pushboolean(L, console);
  return 2;
}

static int l_platform(lua_State *L) {
#if defined(_WIN32)
  lua_pushliteral(L, "windows");
#elif defined(__linux__)
  lua_pushliteral(L, "linux");
#elif defined(__APPLE__)
  lua_pushliteral(L, "macos");
#else
  lua_pushliteral(L, "posix");
#endif
  return 1;
}

/* ---- signals ---- */

typedef struct sig_handle {
  uv_signal_t *sig; /* malloc'd; NULL once closed */
  int fn_ref;
  host_ctx *ctx;
  char name[16];
} sig_handle;

static const struct {
  const char *name;
  int num;
} signal_names[] = {
    {"SIGINT", SIGINT},
    {"SIGTERM", SIGTERM},
#ifdef SIGHUP
    {"SIGHUP", SIGHUP},
#endif
#ifdef SIGBREAK
    {"SIGBREAK", SIGBREAK},
#endif
#ifdef SIGUSR1
    {"SIGUSR1", SIGUSR1},
    {"SIGUSR2", SIGUSR2},
#endif
    /* a request to reload: SIGHUP on POSIX, a service control on Windows */
    {"reload", PLAT_SIGRELOAD},
};

static int signal_number(const char *name) {
  for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++)
    if (strcmp(name, signal_names[i].name) == 0)
      return signal_names[i].num;
  return -1;
}

/* Run the handler of h as a new task; note is added to the log line. */
static void run_handler(sig_handle *h, const char *note) {
  host_ctx *ctx = h->ctx;
  host_log(LOG_INFO, "received %s%s", h->name, note);
  lua_State *L = ctx->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->fn_ref);
  lua_pushstring(L, h->name);
  char tname[32];
  snprintf(tname, sizeof tname, "on %s", h->name);
  task_spawn(L, 1, tname);
  lua_pop(L, 1);
}

/* The first name of signum in signal_names, for the log. */
static const char *signal_name(int signum) {
  for (size_t i = 0; i < sizeof signal_names / sizeof signal_names[0]; i++)
    if (signal_names[i].num == signum)
      return signal_names[i].name;
  return "a signal";
}

static void on_signal(uv_signal_t *sig, int signum) {
  (void)signum;
  sig_handle *h = sig->data;
  if (h->ctx->closing)
    return;
  run_handler(h, "");
}

/* ---- signals held across host.restart() ----
 *
 * A run that ends with host.restart() closes its signal handles with its
 * loop, and the next run installs its own only when its script gets that
 * far (the agent: after its settings, a lock and more). Meanwhile a signal
 * would find no handler: on POSIX libuv puts back SIG_DFL when the last
 * watcher of a signal stops, so SIGTERM or SIGHUP would end the process;
 * on Windows a Ctrl-Break or a service stop would end it (ExitProcess) and
 * a service reload would be lost. So, before the run's handles close, each
 * signal it had a handler for gets a watcher on a loop of the host's own
 * (held.loop), which outlives the run: libuv's handler stays in place all
 * along (no instant without one), and what arrives is queued on that loop,
 * which is never run but to read it. When the next run installs a handler
 * for the signal, host.sys.on_signal takes its watcher back and, when the
 * signal came meanwhile, runs the handler once on the next turn of the
 * loop (once per kind of signal however many came). A signal the next run
 * never installs a handler for stays held until the process ends. The same
 * libuv calls do this on both platforms. */

#define HELD_MAX 8

static struct {
  uv_loop_t loop;
  int loop_open;
  struct held_signal {
    uv_signal_t sig;
    int signum;  /* 0: free */
    int pending; /* it arrived */
    int closing; /* uv_close called, its callback not yet */
  } slot[HELD_MAX];
} held;

static void held_on_signal(uv_signal_t *sig, int signum) {
  (void)signum;
  struct held_signal *s = sig->data;
  s->pending = 1;
}

static void held_closed(uv_handle_t *h) {
  struct held_signal *s = h->data;
  s->signum = 0;
  s->pending = 0;
  s->closing = 0;
}

static struct held_signal *held_find(int signum) {
  for (int i = 0; i < HELD_MAX; i++)
    if (held.slot[i].signum == signum && !held.slot[i].closing)
      return &held.slot[i];
  return NULL;
}

/* Hold signum from now on (while a watcher of the run's own still has it). */
static void held_add(int signum) {
  if (held_find(signum))
    return;
  int rc = 0;
  if (!held.loop_open) {
    rc = uv_loop_init(&held.loop);
    held.loop_open = rc == 0;
  }
  struct held_signal *s = NULL;
  for (int i = 0; !rc && !s && i < HELD_MAX; i++)
    if (held.slot[i].signum == 0 && !held.slot[i].closing)
      s = &held.slot[i];
  if (!rc && !s)
    rc = UV_ENOBUFS;
  if (!rc && (rc = uv_signal_init(&held.loop, &s->sig)) == 0) {
    s->sig.data = s;
    rc = uv_signal_start(&s->sig, held_on_signal, signum);
    if (rc == 0) {
      s->signum = signum;
      s->pending = 0;
    } else {
      s->closing = 1;
      uv_close((uv_handle_t *)&s->sig, held_closed);
    }
  }
  if (rc)
    host_log(LOG_WARN,
             "%s is not held across the restart (%s): it may end the "
             "process until the script installs its handler again",
             signal_name(signum), uv_strerror(rc));
  else
    host_log(LOG_DEBUG, "%s held until the script installs its handler again",
             signal_name(signum));
}

/* Close the loop of held signals, once none is held. */
static void held_close_loop(void) {
  if (!held.loop_open)
    return;
  for (int i = 0; i < HELD_MAX; i++)
    if (held.slot[i].signum && !held.slot[i].closing) {
      held.slot[i].closing = 1;
      uv_close((uv_handle_t *)&held.slot[i].sig, held_closed);
    }
  /* until every watcher is closed: not UV_RUN_DEFAULT, which on Windows
   * may return before a signal queued for a closing watcher is read */
  int closing = 1;
  for (int turn = 0; closing && turn < 100; turn++) {
    uv_run(&held.loop, UV_RUN_NOWAIT);
    closing = 0;
    for (int i = 0; i < HELD_MAX; i++)
      closing |= held.slot[i].closing;
  }
  if (uv_loop_close(&held.loop) == 0)
    held.loop_open = 0;
  else
    host_log(LOG_WARN, "the loop of held signals did not close");
}

/* A watcher of the running script's now has signum: stop holding it;
 * returns whether it arrived while held. Called once the script's watcher
 * has started, so that libuv's handler stays in place; a signal in the
 * instant between the two may reach both (and run the handler twice). */
static int held_take(int signum) {
  struct held_signal *s = held_find(signum);
  if (!s)
    return 0;
  uv_run(&held.loop, UV_RUN_NOWAIT); /* what has come: held_on_signal */
  int pending = s->pending;
  s->closing = 1;
  uv_close((uv_handle_t *)&s->sig, held_closed);
  int left = 0;
  for (int i = 0; i < HELD_MAX; i++)
    left |= held.slot[i].signum && !held.slot[i].closing;
  if (!left)
    held_close_loop();
  return pending;
}

static void hold_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (h->type == UV_SIGNAL && uv_is_active(h) && !uv_is_closing(h))
    held_add(((uv_signal_t *)h)->signum);
}

/* At the end of a run, before its handles close: hold the signals it had
 * handlers for when it restarts; let go of everything when it exits. */
static void sys_on_close(void *data) {
  host_ctx *ctx = data;
  if (ctx->restart)
    uv_walk(&ctx->loop, hold_walk, NULL);
  else
    held_close_loop();
}

static void free_handle(uv_handle_t *h) {
  free(h);
}

static int sig_close(lua_State *L) {
  sig_handle *h = luaL_checkudata(L, 1, SIGNAL_MT);
  if (!h->sig)
    return 0;
  uv_signal_stop(h->sig);
  uv_close((uv_handle_t *)h->sig, free_handle);
  h->sig = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, h->fn_ref);
  lua_getfield(L, LUA_REGISTRYINDEX, SIGNALS_KEY);
  lua_pushvalue(L, 1);
  lua_pushnil(L);
  lua_rawset(L, -3);
  return 0;
}

/* host.sys.on_signal(name, fn) -> handle */
static int l_on_signal(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  int signum = signal_number(name);
  if (signum < 0)
    return luaL_argerror(L, 1, "unknown or unsupported signal name");
  sig_handle *h = lua_newuserdatauv(L, sizeof *h, 0);
  h->sig = NULL;
  h->fn_ref = LUA_NOREF;
  h->ctx = host_get(L);
  snprintf(h->name, sizeof h->name, "%s", name);
  luaL_setmetatable(L, SIGNAL_MT);
  uv_signal_t *sig = malloc(sizeof *sig);
  if (!sig)
    return luaL_error(L, "out of memory");
  uv_signal_init(&h->ctx->loop, sig);
  sig->data = h;
  int rc = uv_signal_start(sig, on_signal, signum);
  if (rc != 0) {
    uv_close((uv_handle_t *)sig, free_handle);
    return host_fail_uv(L, rc, name);
  }
  uv_unref((uv_handle_t *)sig); /* a handler alone keeps nobody running */
  h->sig = sig;
  lua_pushvalue(L, 2);
  h->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, LUA_REGISTRYINDEX, SIGNALS_KEY); /* anchor until closed */
  lua_pushvalue(L, -2);
  lua_pushboolean(L, 1);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  if (held_take(signum))
    run_handler(h, " (during the restart)");
  return 1;
}

void host_open_sys(lua_State *L) {
  static const luaL_Reg sig_methods[] = {{"close", sig_close}, {NULL, NULL}};
  luaL_newmetatable(L, SIGNAL_MT);
  luaL_newlib(L, sig_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, sig_close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, sig_close);
  lua_setfield(L, -2, "__close");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_setfield(L, LUA_REGISTRYINDEX, SIGNALS_KEY);
  host_on_close(host_get(L), sys_on_close, host_get(L));

  static const luaL_Reg funcs[] = {{"getenv", l_getenv},
                                   {"setenv", l_setenv},
                                   {"environ", l_environ},
                                   {"hostname", l_hostname},
                                   {"pid", l_pid},
                                   {"random", l_random},
                                   {"cwd", l_cwd},
                                   {"exepath", l_exepath},
                                   {"cpu_count", l_cpu_count},
                                   {"total_memory", l_total_memory},
                                   {"interfaces", l_interfaces},
                                   {"platform", l_platform},
                                   {"boot_id", l_boot_id},
                                   {"session_id", l_session_id},
                                   {"on_signal", l_on_signal},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "sys");
}
