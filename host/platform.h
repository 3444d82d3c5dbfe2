/* platform.h: the few things that differ between POSIX and Windows and that
 * libuv does not cover. Implemented in platform_posix.c and platform_win.c;
 * everything else in host/ is shared code. */
#ifndef GOLIAT_PLATFORM_H
#define GOLIAT_PLATFORM_H

#include <time.h>
#include <uv.h>

/* Once at start-up, before anything else (ignores SIGPIPE on POSIX). */
void plat_init(void);

/* Broken-down UTC time of t; returns 0 on success. */
int plat_gmtime(time_t t, struct tm *out);

/* Spawn flags that make the child the root of a tree we can signal as a
 * whole (a new process group on POSIX). */
unsigned plat_spawn_tree_flags(void);

typedef struct plat_tree plat_tree; /* per-child tree handle (a Job Object
                                       on Windows), or NULL */

/* Adopt the freshly spawned child pid as the root of a tree. May return
 * NULL with *err set (a libuv error code). */
plat_tree *plat_tree_attach(uv_process_t *child, int *err);

/* Ask the tree to stop (SIGTERM to the group; CTRL_BREAK on Windows). */
int plat_tree_terminate(plat_tree *tree, uv_process_t *child, int pid);

/* Kill every process of the tree at once (SIGKILL to the group; closing the
 * job with kill-on-close on Windows). */
int plat_tree_kill(plat_tree *tree, uv_process_t *child, int pid);

/* Send signal signum to the tree (POSIX); on Windows only SIGTERM/SIGKILL
 * and SIGINT/SIGBREAK mean anything. child is NULL for a process that is
 * not ours (host.proc.attach). */
int plat_tree_signal(plat_tree *tree, uv_process_t *child, int pid, int signum);

/* Whether any process of the tree is still alive. */
int plat_tree_alive(plat_tree *tree, int pid);

void plat_tree_free(plat_tree *tree);

/* Whether process pid runs (a zombie does not). */
int plat_pid_alive(int pid);

/* When process pid started, in a platform unit (clock ticks since boot on
 * Linux, FILETIME on Windows); 0 or a libuv error. */
int plat_pid_start_time(int pid, double *out);

#endif
