/* platform_posix.c: the POSIX side of platform.h. A child's tree is its
 * process group: the child is spawned detached (setsid), so it leads a new
 * session and group, and every descendant that does not leave the group on
 * purpose is signalled with it. */
#ifdef __linux__
#define _GNU_SOURCE /* gettid, SIGEV_THREAD_ID */
#endif
#include "platform.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#endif
#ifdef __GLIBC__
#include <malloc.h>
#endif

void plat_init(void) {
  signal(SIGPIPE, SIG_IGN);
#ifdef __GLIBC__
  /* Blocks of 256 KiB and more (a study's upload through the gateway, a
   * config) are mapped on their own and go back to the system when freed.
   * By default glibc raises this threshold to the largest block freed so
   * far, after which such blocks come from the heap, whose top is rarely
   * free: an agent that forwarded one 5 MB upload kept 28 MB. */
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

int plat_gmtime(time_t t, struct tm *out) {
  return gmtime_r(&t, out) ? 0 : -1;
}

void plat_args(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
}

int plat_service_main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fputs("goliat-host: --service is for Windows; on Linux run the agent "
        "under systemd (see examples/goliat-agent.service)\n",
        stderr);
  return 2;
}

int plat_service_reload(int argc, char **argv) {
  (void)argc;
  fprintf(stderr,
          "goliat-host: %s is for Windows; on Linux: systemctl reload "
          "goliat-agent, or kill -HUP the agent's pid\n",
          argv[1]);
  return 2;
}

int plat_desktop_main(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fputs("goliat-host: --desktop is for Windows; on Linux run the agent "
        "under systemd (see examples/goliat-agent.service)\n",
        stderr);
  return 2;
}

int plat_install(int argc, char **argv) {
  (void)argc;
  fprintf(stderr,
          "goliat-host: %s is for Windows. On Linux the Debian package "
          "(goliat-host_<version>_amd64.deb) installs the agent and its "
          "systemd unit goliat-agent.service; enable and start it with "
          "`systemctl enable --now goliat-agent`, stop and disable it with "
          "`systemctl disable --now goliat-agent`, remove it with "
          "`apt-get remove goliat-host` (README.md, \"Deploying on "
          "Linux\")\n",
          argv[1]);
  return 2;
}

int plat_stop(int argc, char **argv) {
  (void)argc;
  (void)argv;
  fputs("goliat-host: --stop is for Windows; on Linux: systemctl stop "
        "goliat-agent, or kill -TERM the agent's pid\n",
        stderr);
  return 2;
}

int plat_session_id(int pid, unsigned long *id, int *console) {
  (void)pid;
  (void)id;
  (void)console;
  return UV_ENOSYS; /* no Windows sessions: the display is $DISPLAY */
}

int plat_boot_id(char *buf, size_t size) {
#ifdef __linux__
  static const char path[] = "/proc/sys/kernel/random/boot_id";
  FILE *f = fopen(path, "r");
  size_t n = 0;
  int err = 0;
  if (f) {
    errno = 0;
    n = fread(buf, 1, size - 1, f);
    if (ferror(f))
      err = errno ? errno : EIO;
    fclose(f);
  } else {
    err = errno;
  }
  if (err) {
    snprintf(buf, size, "cannot read %s: %s", path, strerror(err));
    return uv_translate_sys_error(err);
  }
  while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
    n--;
  buf[n] = '\0';
  if (n == 0) {
    snprintf(buf, size, "%s is empty", path);
    return UV_EINVAL;
  }
  return 0;
#else
  snprintf(buf, size, "no boot id on this system");
  return UV_ENOSYS;
#endif
}

/* ---- child processes: libuv's uv_process_t ---- */

struct plat_child {
  uv_process_t handle;
  plat_exit_fn exit_fn;
  plat_closed_fn closed_fn;
  void *data;
};

static void on_child_exit(uv_process_t *h, int64_t status, int term_signal) {
  plat_child *c = h->data;
  c->exit_fn(c->data, status, term_signal);
}

static void on_child_closed(uv_handle_t *h) {
  plat_child *c = h->data;
  if (c->closed_fn)
    c->closed_fn(c->data);
  free(c);
}

int plat_spawn(uv_loop_t *loop, const uv_process_options_t *o, int new_tree,
               plat_exit_fn exit_fn, void *data, plat_child **child,
               plat_tree **tree) {
  plat_child *c = calloc(1, sizeof *c);
  if (!c)
    return UV_ENOMEM;
  c->exit_fn = exit_fn;
  c->data = data;
  c->handle.data = c;
  uv_process_options_t opts = *o;
  opts.exit_cb = on_child_exit;
  if (new_tree)
    opts.flags |= UV_PROCESS_DETACHED; /* setsid: a new session and group */
  int rc = uv_spawn(loop, &c->handle, &opts);
  if (rc < 0) {
    /* libuv needs the handle closed even when spawn failed */
    uv_close((uv_handle_t *)&c->handle, on_child_closed);
    return rc;
  }
  *child = c;
  *tree = NULL; /* the process group needs no handle */
  return 0;
}

int plat_child_pid(const plat_child *c) {
  return c->handle.pid;
}

void plat_child_close(plat_child *c, plat_closed_fn closed_fn) {
  c->closed_fn = closed_fn;
  uv_close((uv_handle_t *)&c->handle, on_child_closed);
}

plat_tree *plat_tree_find(int pid) {
  (void)pid;
  return NULL;
}

int plat_tree_signal(plat_tree *tree, plat_child *child, int pid, int signum) {
  (void)tree;
  (void)child;
  if (kill(-(pid_t)pid, signum) == 0)
    return 0;
  return -errno; /* libuv error codes are negated errno on POSIX */
}

int plat_tree_terminate(plat_tree *tree, plat_child *child, int pid) {
  return plat_tree_signal(tree, child, pid, SIGTERM);
}

int plat_tree_kill(plat_tree *tree, plat_child *child, int pid) {
  return plat_tree_signal(tree, child, pid, SIGKILL);
}

#ifdef __linux__
/* Read /proc/<pid>/stat; returns a pointer just after the command name
 * (which may hold spaces and parentheses), or NULL. */
static const char *read_stat(pid_t pid, char *buf, size_t size) {
  char path[sizeof "/proc/-2147483648/stat"];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return NULL;
  size_t n = fread(buf, 1, size - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *end = strrchr(buf, ')');
  return end ? end + 1 : NULL;
}

/* Whether /proc/<pid>/stat shows a live (not zombie) member of group pgid.
 * The fields after the command name (which may hold spaces and parentheses)
 * are: state ppid pgrp. */
static int live_member(pid_t pid, int pgid) {
  char buf[512];
  const char *rest = read_stat(pid, buf, sizeof buf);
  char state;
  int ppid, pgrp;
  if (!rest || sscanf(rest, " %c %d %d", &state, &ppid, &pgrp) != 3)
    return 0;
  return pgrp == pgid && state != 'Z' && state != 'X';
}

/* A zombie still counts for kill(-pgid, 0) until its new parent reaps it,
 * which can take a while: look for members that really run. */
static int group_has_live_member(int pgid) {
  DIR *d = opendir("/proc");
  if (!d)
    return -1;
  int found = 0;
  struct dirent *e;
  while (!found && (e = readdir(d)) != NULL)
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9')
      found = live_member((pid_t)strtol(e->d_name, NULL, 10), pgid);
  closedir(d);
  return found;
}
#endif

int plat_tree_alive(plat_tree *tree, int pid) {
  (void)tree;
  if (!(kill(-(pid_t)pid, 0) == 0 || errno == EPERM))
    return 0;
#ifdef __linux__
  int live = group_has_live_member(pid);
  if (live >= 0)
    return live;
#endif
  return 1;
}

void plat_tree_free(plat_tree *tree) {
  (void)tree;
}

int plat_pid_alive(int pid) {
  if (pid <= 0 || (kill((pid_t)pid, 0) != 0 && errno != EPERM))
    return 0;
#ifdef __linux__
  char buf[512], state;
  const char *rest = read_stat((pid_t)pid, buf, sizeof buf);
  if (rest && sscanf(rest, " %c", &state) == 1)
    return state != 'Z' && state != 'X';
#endif
  return 1;
}

struct plat_lock {
  int fd;
};

int plat_lock_file(const char *path, plat_lock **lock) {
  /* O_NOFOLLOW: a link planted in its place is not followed (as root) */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0)
    return uv_translate_sys_error(errno);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    close(fd);
    return err == EWOULDBLOCK ? UV_EBUSY : uv_translate_sys_error(err);
  }
  *lock = malloc(sizeof **lock);
  if (!*lock) {
    close(fd);
    return UV_ENOMEM;
  }
  (*lock)->fd = fd;
  return 0;
}

void plat_unlock(plat_lock *lock) {
  if (lock) {
    close(lock->fd); /* releases the flock */
    free(lock);
  }
}

int plat_pid_start_time(int pid, long long *out) {
#ifdef __linux__
  char buf[1024];
  const char *rest = read_stat((pid_t)pid, buf, sizeof buf);
  if (!rest)
    return UV_ESRCH;
  /* fields 3..21 precede starttime (field 22) */
  unsigned long long start;
  const char *p = rest;
  for (int field = 3; field <= 21; field++) {
    while (*p == ' ')
      p++;
    while (*p && *p != ' ')
      p++;
  }
  if (sscanf(p, " %llu", &start) != 1)
    return UV_EINVAL;
  *out = (long long)start;
  return 0;
#else
  (void)pid;
  (void)out;
  return UV_ENOSYS;
#endif
}

int plat_keep_tree(void) {
#ifdef __linux__
  if (prctl(PR_SET_CHILD_SUBREAPER, 1L, 0L, 0L, 0L) != 0)
    return uv_translate_sys_error(errno);
  return 0;
#else
  return UV_ENOSYS;
#endif
}

int plat_orphans(const int *own, size_t n, int signum) {
#ifdef __linux__
  DIR *d = opendir("/proc");
  if (!d)
    return uv_translate_sys_error(errno);
  pid_t self = getpid();
  int running = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9')
      continue;
    char buf[512], state;
    int ppid;
    pid_t pid = (pid_t)strtol(e->d_name, NULL, 10);
    const char *rest = read_stat(pid, buf, sizeof buf);
    if (!rest || sscanf(rest, " %c %d", &state, &ppid) != 2 || ppid != self)
      continue;
    int ours = 0;
    for (size_t i = 0; i < n && !ours; i++)
      ours = own[i] == (int)pid;
    if (ours || pid <= 1)
      continue;
    if (state == 'Z' || state == 'X') {
      waitpid(pid, NULL, WNOHANG); /* not libuv's: nobody else reaps it */
      continue;
    }
    running++;
    if (signum > 0)
      kill(pid, signum);
  }
  closedir(d);
  return running;
#else
  (void)own;
  (void)n;
  (void)signum;
  return 0;
#endif
}

/* close-on-exec, so that a study never inherits the agent's connections */
uv_os_sock_t plat_open_socket(int family, int type, int protocol) {
#ifdef SOCK_CLOEXEC
  return socket(family, type | SOCK_CLOEXEC, protocol);
#else
  int s = socket(family, type, protocol);
  if (s >= 0)
    fcntl(s, F_SETFD, FD_CLOEXEC);
  return s;
#endif
}

void plat_close_socket(uv_os_sock_t s) {
  close(s);
}

/* ---- the watchdog's ticker: SIGPROF from a CPU-time timer ---- */

static void (*ticker_fn)(void);
static timer_t ticker;
static int ticker_on;

static void on_ticker_signal(int sig) {
  (void)sig;
  int saved = errno;
  void (*fn)(void) = ticker_fn;
  if (fn)
    fn();
  errno = saved;
}

int plat_ticker_start(void (*tick)(void), double period_s) {
  plat_ticker_stop();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_ticker_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGPROF, &sa, NULL) != 0)
    return -errno;
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_signo = SIGPROF;
#ifdef SIGEV_THREAD_ID
  /* to this thread, which runs Lua; never to a helper thread */
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev._sigev_un._tid = gettid(); /* glibc names no macro for it */
#else
  ev.sigev_notify = SIGEV_SIGNAL;
#endif
  if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &ev, &ticker) != 0)
    return -errno;
  struct itimerspec its;
  its.it_value.tv_sec = (time_t)period_s;
  its.it_value.tv_nsec = (long)((period_s - (double)its.it_value.tv_sec) * 1e9);
  if (its.it_value.tv_sec == 0 && its.it_value.tv_nsec == 0)
    its.it_value.tv_nsec = 1000000;
  its.it_interval = its.it_value;
  ticker_fn = tick;
  if (timer_settime(ticker, 0, &its, NULL) != 0) {
    int e = -errno;
    timer_delete(ticker);
    ticker_fn = NULL;
    return e;
  }
  ticker_on = 1;
  return 0;
}

void plat_ticker_stop(void) {
  if (!ticker_on)
    return;
  timer_delete(ticker);
  ticker_on = 0;
  ticker_fn = NULL;
}
