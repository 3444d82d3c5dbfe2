/* platform.h: the few things that differ between POSIX and Windows and that
 * libuv does not cover. Implemented in platform_posix.c and platform_win.c;
 * everything else in host/ is shared code. */
#ifndef GOLIAT_PLATFORM_H
#define GOLIAT_PLATFORM_H

#include <signal.h>
#include <time.h>
#include <uv.h>

/* Once at start-up, before anything else (ignores SIGPIPE on POSIX). */
void plat_init(void);

/* Broken-down UTC time of t; returns 0 on success. */
int plat_gmtime(time_t t, struct tm *out);

/* UTF-8 command-line arguments (Windows passes them in UTF-16; POSIX
 * leaves argc and argv as they are). Called first thing in main(). */
void plat_args(int *argc, char ***argv);

/* goliat-host --service NAME SCRIPT [ARG...]: run SCRIPT as the Windows
 * service NAME (platform_win.c). Elsewhere it prints why not and returns
 * 2. Returns the process exit code. */
int plat_service_main(int argc, char **argv);

/* goliat-host --reload NAME (or --service-reload NAME): ask the running
 * Windows service NAME to reload its script (SERVICE_CONTROL_PARAMCHANGE),
 * or the desktop supervisor NAME when there is no such service. Elsewhere
 * it prints how to reload there and returns 2. Returns the exit code. */
int plat_service_reload(int argc, char **argv);

/* goliat-host --desktop NAME SCRIPT [ARG...]: supervise SCRIPT in the
 * interactive session this process runs in, as the service does
 * (platform_win.c; what the logon task of --install desktop runs).
 * Elsewhere it prints why not and returns 2. Returns the exit code. */
int plat_desktop_main(int argc, char **argv);

/* goliat-host --install service|desktop [...] and --uninstall [...]:
 * install the agent next to goliat-host.exe as the Windows service or as a
 * logon task running --desktop, or remove it (platform_win.c). Elsewhere
 * it prints how the Debian package installs the systemd unit and returns
 * 2. Returns the process exit code. */
int plat_install(int argc, char **argv);

/* goliat-host --stop NAME: stop the agent of the service or of the
 * desktop supervisor NAME cleanly. Elsewhere it prints how to stop it
 * there and returns 2. Returns the process exit code. */
int plat_stop(int argc, char **argv);

/* The id of the login session process pid runs in (pid 0: this process),
 * and whether that session is the one attached to the console now (the
 * machine's screen, where autologon logs on). Returns 0, or a libuv error
 * (UV_ENOSYS where the platform has no such sessions: POSIX). */
int plat_session_id(int pid, unsigned long *id, int *console);

/* The signal number behind host.sys.on_signal("reload"): SIGHUP on POSIX.
 * Windows has no such signal: there it is a number of the host's own,
 * raised in a service's child when the service is asked to reload
 * (platform_win.c). */
#ifdef _WIN32
#define PLAT_SIGRELOAD 12
#else
#define PLAT_SIGRELOAD SIGHUP
#endif

/* The separator host.fs.join puts between parts: a backslash on Windows
 * (where it also replaces every '/'), '/' elsewhere. */
#ifdef _WIN32
#define PLAT_PATH_SEP '\\'
#else
#define PLAT_PATH_SEP '/'
#endif

/* What identifies the current boot of the machine, the same for every
 * process until it restarts: on Linux the kernel's boot_id (a UUID), on
 * Windows the registry's boot count (BootId) in decimal. Returns 0 with the
 * id in buf, or a libuv error with the reason in buf (UV_ENOSYS where the
 * platform has none). */
int plat_boot_id(char *buf, size_t size);

/* ---- child processes ---- */

typedef struct plat_child plat_child; /* a child being watched */
typedef struct plat_tree plat_tree;   /* a child's tree when the platform
                                         needs a handle for it (a Job Object
                                         on Windows), or NULL */

/* Called on the loop when the child has ended: status and term_signal as
 * libuv reports them (term_signal is SIGKILL for a tree the host killed). */
typedef void (*plat_exit_fn)(void *data, int64_t status, int term_signal);
typedef void (*plat_closed_fn)(void *data);

/* Start the child described by o (file, args, env, cwd, stdio and flags;
 * o->exit_cb is not used: exit_fn(data, ...) is called instead). With
 * new_tree, the child is the root of a tree the host can stop as a whole:
 * on POSIX it leads a new session and process group; on Windows it starts
 * suspended in a new process group (for Ctrl-Break), is put in a Job Object
 * of its own and only then resumed, so no descendant can start outside the
 * job. Returns 0 and sets *child and *tree, or returns a libuv error and
 * there is nothing to close. */
int plat_spawn(uv_loop_t *loop, const uv_process_options_t *o, int new_tree,
               plat_exit_fn exit_fn, void *data, plat_child **child,
               plat_tree **tree);

int plat_child_pid(const plat_child *c);

/* Stop watching the child (it keeps running) and free it; closed_fn(data)
 * is called on the loop once that is done, and exit_fn never again. */
void plat_child_close(plat_child *c, plat_closed_fn closed_fn);

/* The tree of pid, a process that is not our child (host.proc.attach), if
 * the platform can find it again (Windows: the named Job Object it was
 * started in); NULL otherwise. */
plat_tree *plat_tree_find(int pid);

/* Below, child is NULL once the child's watch is closed, or for a process
 * that is not ours (host.proc.attach); tree may be NULL. */

/* Ask the tree to stop (SIGTERM to the group; Ctrl-Break on Windows). */
int plat_tree_terminate(plat_tree *tree, plat_child *child, int pid);

/* Kill every process of the tree at once (SIGKILL to the group;
 * TerminateJobObject on Windows). */
int plat_tree_kill(plat_tree *tree, plat_child *child, int pid);

/* Send signal signum to the tree (POSIX); on Windows only SIGTERM/SIGKILL
 * and SIGINT/SIGBREAK mean anything. */
int plat_tree_signal(plat_tree *tree, plat_child *child, int pid, int signum);

/* Whether any process of the tree is still alive. */
int plat_tree_alive(plat_tree *tree, int pid);

void plat_tree_free(plat_tree *tree);

/* Whether process pid runs (a zombie does not). */
int plat_pid_alive(int pid);

/* When process pid started, in a platform unit (clock ticks since boot on
 * Linux, FILETIME on Windows); 0 or a libuv error. */
int plat_pid_start_time(int pid, long long *out);

/* This process keeps what it starts (a study's wrapper, the agent): on
 * Linux it becomes the child subreaper of its descendants, so that a
 * descendant orphaned or detached (setsid) is re-parented to it rather than
 * to init and can still be ended (plat_orphans); on Windows, when it is the
 * root of a tree started by plat_spawn, it holds a handle of that tree's
 * Job Object, so that the job and its name last as long as it does (a named
 * object leaves the namespace with its last handle). Returns 0, or
 * UV_ENOSYS where the platform has neither. */
int plat_keep_tree(void);

/* The orphans this process adopted as subreaper: its children other than
 * the pids in own[0..n) (those host.proc spawned, which libuv reaps).
 * Exited ones are reaped; signum (when > 0) is sent to the others, each a
 * child not yet reaped, so its pid cannot have been reused. Returns how
 * many still run (0 where the platform has no subreaper: a Windows tree's
 * Job Object holds every descendant instead), or a libuv error. */
int plat_orphans(const int *own, size_t n, int signum);

/* ---- file locks ---- */

/* Take an exclusive lock on the file path (created if missing) without
 * waiting. The lock lasts until plat_unlock or the process ends, however
 * it ends (a kill too); children do not inherit it. Returns 0 and sets
 * *lock, UV_EBUSY when another process holds it, or a libuv error. */
typedef struct plat_lock plat_lock;
int plat_lock_file(const char *path, plat_lock **lock);
void plat_unlock(plat_lock *lock);

/* The watchdog's ticker (task.c): tick() is called about every period_s
 * seconds that the process spends on a CPU (POSIX: a CPU-time timer whose
 * signal goes to the calling thread, so that an idle process is never
 * woken), or of wall time (Windows: a timer-queue timer; the calling
 * thread is suspended while tick runs). tick interrupts the calling
 * thread: it may only read memory and call lua_sethook. Starting it again
 * replaces the period. Returns 0 or a libuv error. */
int plat_ticker_start(void (*tick)(void), double period_s);
void plat_ticker_stop(void);

/* Open and close a socket for libcurl's connections (socket() and close()
 * or closesocket()); plat_open_socket returns -1 (INVALID_SOCKET) on
 * failure. */
uv_os_sock_t plat_open_socket(int family, int type, int protocol);
void plat_close_socket(uv_os_sock_t s);

#endif
