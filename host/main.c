/* main.c: goliat-host SCRIPT [ARG...]
 *
 * Creates the loop and the Lua state, registers the `host` module, runs
 * SCRIPT as the first task and turns the loop until nothing is left to do or
 * a script calls os.exit().
 */
#include "host.h"
#include "log.h"
#include "platform.h"
#include "task.h"

#include <curl/curl.h>
#include <errno.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage[] =
    "usage: goliat-host SCRIPT [ARG...]\n"
    "       goliat-host --version | --help\n"
    "\n"
    "Windows (README.md, \"Deploying on Windows\"):\n"
    "       goliat-host --install service [--name NAME]\n"
    "       goliat-host --install desktop [--user USER] [--name NAME]\n"
    "       goliat-host --uninstall [--name NAME]\n"
    "           from an elevated prompt: run scripts\\agent.lua (next to\n"
    "           goliat-host.exe) as the Windows service NAME (default\n"
    "           goliat-agent; starts at boot, no desktop), or in the desktop\n"
    "           of USER (default: you) from logon to logoff, by a logon task\n"
    "           NAME; one mode at a time. --uninstall removes either\n"
    "       goliat-host --reload NAME   reload its script and settings\n"
    "                                   (as SIGHUP on Linux; also\n"
    "                                   --service-reload NAME)\n"
    "       goliat-host --stop NAME     stop the agent cleanly\n"
    "       goliat-host --service NAME SCRIPT [ARG...]   (the service)\n"
    "       goliat-host --desktop NAME SCRIPT [ARG...]   (the logon task)\n"
    "\n"
    "Runs the Lua 5.4 SCRIPT with the `host` module (tasks, HTTP client and\n"
    "server, processes, timers, files, system) and `cjson`. The script's\n"
    "folder and its lib/ subfolder are on the module path. ARGs are in the\n"
    "global `arg` and in `...`.\n"
    "\n"
    "Environment:\n"
    "  GOLIAT_LOG_LEVEL      debug, info (default), warn or error\n"
    "  GOLIAT_LOG_FILE       write the log to this file (appended to) instead\n"
    "                        of standard error; children do not inherit it\n"
    "  GOLIAT_LOG_MAX_BYTES  rotate the log file before a line takes it past\n"
    "                        this size (default 10485760, 10 MiB): FILE.1 is\n"
    "                        the newest rotated copy, FILE.2 the one before\n"
    "  GOLIAT_LOG_KEEP       rotated copies kept, 0 to 100 (default 5; 0\n"
    "                        empties the file instead)\n"
    "  GOLIAT_TASK_LIMIT     seconds a task may run without yielding before\n"
    "                        it is stopped (default 5; 0: no watchdog)\n"
    "\n"
    "As a Windows service or desktop supervisor, the log goes to NAME.log\n"
    "next to goliat-host.exe unless GOLIAT_LOG_FILE is set, and is rotated\n"
    "all the same.\n";

static int luaopen_host(lua_State *L) {
  lua_newtable(L);
  lua_pushstring(L, HOST_VERSION);
  lua_setfield(L, -2, "version");
  host_open_task(L);
  host_open_time(L);
  host_open_log(L);
  host_open_fs(L);
  host_open_sys(L);
  host_open_proc(L);
  host_open_http_client(L);
  host_open_http_server(L);
  host_open_json(L);
  return 1;
}

#ifdef GOLIAT_STATIC_MODULES
/* C modules linked into the executable (the Windows build, which loads no
 * shared Lua modules): name and luaopen_ function, listed by the build. */
extern const luaL_Reg host_static_modules[];

static void preload_static_modules(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (const luaL_Reg *m = host_static_modules; m->name; m++) {
    lua_pushcfunction(L, m->func);
    lua_setfield(L, -2, m->name);
  }
  lua_pop(L, 1);
}
#endif

/* Lua warnings ("@on"/"@off" control them) go to the log. */
static void on_warning(void *ud, const char *msg, int tocont) {
  static char buf[1024];
  static size_t len;
  int *on = ud;
  if (!tocont && len == 0 && msg[0] == '@') {
    if (strcmp(msg, "@on") == 0)
      *on = 1;
    else if (strcmp(msg, "@off") == 0)
      *on = 0;
    return;
  }
  size_t n = strlen(msg);
  if (n > sizeof buf - 1 - len)
    n = sizeof buf - 1 - len;
  memcpy(buf + len, msg, n);
  len += n;
  buf[len] = '\0';
  if (tocont)
    return;
  if (*on)
    host_log(LOG_WARN, "lua warning: %s", buf);
  len = 0;
}

/* Put SCRIPT's folder and its lib/ in front of package.path. */
static void set_module_path(lua_State *L, const char *script) {
  const char *slash = strrchr(script, '/');
  const char *bslash = strrchr(script, '\\');
  if (bslash && (!slash || bslash > slash))
    slash = bslash;
  lua_getglobal(L, "package");
  if (slash)
    lua_pushlstring(L, script, (size_t)(slash - script));
  else
    lua_pushliteral(L, ".");
  const char *dir = lua_tostring(L, -1);
  lua_getfield(L, -2, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/lib/?.lua;%s", dir, dir, dir,
                  lua_tostring(L, -1));
  lua_setfield(L, -4, "path");
  lua_pop(L, 3);
}

/* The global `arg` as the lua interpreter sets it; pushes the script's
 * arguments and returns how many. */
static int set_args(lua_State *L, int argc, char **argv) {
  lua_createtable(L, argc - 2, 2);
  for (int i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  luaL_checkstack(L, argc, "too many arguments");
  for (int i = 2; i < argc; i++)
    lua_pushstring(L, argv[i]);
  return argc - 2;
}

/* A whole number from min to max written in decimal digits only; 0, or -1
 * when s is not one. */
static int parse_count(const char *s, long long min, long long max,
                       long long *out) {
  if (*s < '0' || *s > '9')
    return -1;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (*end || errno == ERANGE || v < min || v > max)
    return -1;
  *out = v;
  return 0;
}

/* The environment variable name as UTF-8 (getenv gives the ANSI code page
 * on Windows), malloc'd; NULL when it is unset or empty. */
static char *getenv_utf8(const char *name) {
  char probe[1];
  size_t size = sizeof probe;
  if (uv_os_getenv(name, probe, &size) != UV_ENOBUFS)
    return NULL; /* unset, or empty */
  char *value = malloc(size);
  if (value && uv_os_getenv(name, value, &size) != 0) {
    free(value);
    value = NULL;
  }
  return value;
}

/* GOLIAT_LOG_FILE, GOLIAT_LOG_MAX_BYTES and GOLIAT_LOG_KEEP, before the
 * other variables so that their warnings go to the file as well. */
static void configure_log_file(void) {
  const char *max_s = getenv("GOLIAT_LOG_MAX_BYTES");
  const char *keep_s = getenv("GOLIAT_LOG_KEEP");
  long long max = HOST_LOG_MAX_BYTES, keep = HOST_LOG_KEEP;
  int bad_max = max_s && *max_s && parse_count(max_s, 1, INT64_MAX, &max);
  int bad_keep =
      keep_s && *keep_s && parse_count(keep_s, 0, HOST_LOG_KEEP_MAX, &keep);
  char *path = getenv_utf8("GOLIAT_LOG_FILE");
  if (path)
    host_log_to_file(path, max, (int)keep);
  if (bad_max)
    host_log(LOG_WARN,
             "GOLIAT_LOG_MAX_BYTES=%s is not a whole number of bytes > 0; "
             "using %d",
             max_s, HOST_LOG_MAX_BYTES);
  if (bad_keep)
    host_log(LOG_WARN,
             "GOLIAT_LOG_KEEP=%s is not a whole number from 0 to %d; using %d",
             keep_s, HOST_LOG_KEEP_MAX, HOST_LOG_KEEP);
  if (path) {
    /* the file is this process's: a goliat-host it starts (a study's
     * wrapper) logs where its own stderr goes, not into this file */
    uv_os_unsetenv("GOLIAT_LOG_FILE");
    free(path);
  }
}

static void configure_from_env(host_ctx *ctx) {
  const char *level = getenv("GOLIAT_LOG_LEVEL");
  int lv = level && *level ? host_log_parse_level(level) : LOG_INFO;
  if (lv >= 0)
    host_log_set_level(lv);
  configure_log_file();
  if (lv < 0)
    host_log(LOG_WARN,
             "GOLIAT_LOG_LEVEL=%s is not debug, info, warn or "
             "error; using info",
             level);
  ctx->task_limit_s = 5.0;
  const char *limit = getenv("GOLIAT_TASK_LIMIT");
  if (limit && *limit) {
    char *end;
    double v = strtod(limit, &end);
    if (*end || v < 0)
      host_log(LOG_WARN,
               "GOLIAT_TASK_LIMIT=%s is not a number of seconds "
               ">= 0; using 5",
               limit);
    else
      ctx->task_limit_s = v;
  }
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

static void shut_down(host_ctx *ctx) {
  ctx->closing = 1;
  for (host_close_hook *h = ctx->close_hooks, *next; h; h = next) {
    next = h->next;
    h->fn(h->data);
    free(h);
  }
  ctx->close_hooks = NULL;
  lua_close(ctx->L);
  uv_walk(&ctx->loop, close_walk, NULL);
  uv_run(&ctx->loop, UV_RUN_DEFAULT);
  if (uv_loop_close(&ctx->loop) != 0)
    host_log(LOG_WARN, "some libuv handles were still open at exit");
}

/* One run of the script; *restart is set when it asked to run again. */
static int run(int argc, char **argv, int *restart) {
  static host_ctx ctx;
  static int warnings_on;
  memset(&ctx, 0, sizeof ctx);
  warnings_on = 0;
  int rc = uv_loop_init(&ctx.loop);
  if (rc != 0) {
    fprintf(stderr, "goliat-host: %s\n", uv_strerror(rc));
    return EXIT_FAILURE;
  }
  configure_from_env(&ctx);
  ctx.L = luaL_newstate();
  if (!ctx.L) {
    fprintf(stderr, "goliat-host: cannot create the Lua state\n");
    return EXIT_FAILURE;
  }
  *(host_ctx **)lua_getextraspace(ctx.L) = &ctx;
  lua_setwarnf(ctx.L, on_warning, &warnings_on);
  lua_warning(ctx.L, "@on", 0);
  luaL_openlibs(ctx.L);
#ifdef GOLIAT_STATIC_MODULES
  preload_static_modules(ctx.L);
#endif
  luaL_requiref(ctx.L, "host", luaopen_host, 0);
  lua_pop(ctx.L, 1);
  set_module_path(ctx.L, argv[1]);
  task_install_watchdog(ctx.L);

  if (luaL_loadfile(ctx.L, argv[1]) != LUA_OK) {
    fprintf(stderr, "goliat-host: %s\n", lua_tostring(ctx.L, -1));
    lua_pop(ctx.L, 1);
    ctx.exit_code = EXIT_FAILURE;
  } else {
    int nargs = set_args(ctx.L, argc, argv);
    task_start_main(&ctx, ctx.L, nargs);
    uv_run(&ctx.loop, UV_RUN_DEFAULT);
    if (!ctx.exiting && task_count_alive(&ctx) > 0)
      host_log(LOG_DEBUG,
               "%d task(s) still waiting with nothing left to "
               "wake them",
               task_count_alive(&ctx));
  }
  shut_down(&ctx);
  *restart = ctx.restart;
  return ctx.exit_code;
}

int main(int argc, char **argv) {
  plat_args(&argc, &argv);
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  if (strcmp(argv[1], "--version") == 0) {
    printf("goliat-host %s (%s, libuv %s, %s)\n", HOST_VERSION, LUA_RELEASE,
           uv_version_string(), curl_version());
    return 0;
  }
  if (strcmp(argv[1], "--service") == 0)
    return plat_service_main(argc, argv);
  if (strcmp(argv[1], "--desktop") == 0)
    return plat_desktop_main(argc, argv);
  if (strcmp(argv[1], "--service-reload") == 0 ||
      strcmp(argv[1], "--reload") == 0)
    return plat_service_reload(argc, argv);
  if (strcmp(argv[1], "--stop") == 0)
    return plat_stop(argc, argv);
  if (strcmp(argv[1], "--install") == 0 || strcmp(argv[1], "--uninstall") == 0)
    return plat_install(argc, argv);
  if (argv[1][0] == '-' && argv[1][1] != '\0') {
    fprintf(stderr, "goliat-host: unknown option %s\n\n%s", argv[1], usage);
    return 2;
  }
  plat_init();
  argv = uv_setup_args(argc, argv);
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "goliat-host: libcurl failed to initialise\n");
    return EXIT_FAILURE;
  }
  int rc, restart;
  do {
    rc = run(argc, argv, &restart);
    if (restart)
      host_log(LOG_INFO, "restarting %s", argv[1]);
  } while (restart);
  curl_global_cleanup();
  host_log_close();
  uv_library_shutdown();
  return rc;
}
