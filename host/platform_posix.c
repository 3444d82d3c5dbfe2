/* platform_posix.c: the POSIX side of platform.h. A child's tree is its
 * process group: the child is spawned detached (setsid), so it leads a new
 * session and group, and every descendant that does not leave the group on
 * purpose is signalled with it. */
#include "platform.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>

void plat_init(void) {
  signal(SIGPIPE, SIG_IGN);
}

int plat_gmtime(time_t t, struct tm *out) {
  return gmtime_r(&t, out) ? 0 : -1;
}

unsigned plat_spawn_tree_flags(void) {
  return UV_PROCESS_DETACHED;
}

plat_tree *plat_tree_attach(uv_process_t *child, int *err) {
  (void)child;
  *err = 0;
  return NULL; /* the process group needs no handle */
}

int plat_tree_signal(plat_tree *tree, uv_process_t *child, int pid,
                     int signum) {
  (void)tree;
  (void)child;
  if (kill(-(pid_t)pid, signum) == 0)
    return 0;
  return -errno; /* libuv error codes are negated errno on POSIX */
}

int plat_tree_terminate(plat_tree *tree, uv_process_t *child, int pid) {
  return plat_tree_signal(tree, child, pid, SIGTERM);
}

int plat_tree_kill(plat_tree *tree, uv_process_t *child, int pid) {
  return plat_tree_signal(tree, child, pid, SIGKILL);
}

int plat_tree_alive(plat_tree *tree, int pid) {
  (void)tree;
  return kill(-(pid_t)pid, 0) == 0 || errno == EPERM;
}

void plat_tree_free(plat_tree *tree) {
  (void)tree;
}
