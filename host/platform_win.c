/* platform_win.c: the Windows side of platform.h. A child's tree is a Job
 * Object: every process the child starts is in the job too, and the whole
 * job is terminated at once. The job is not kill-on-close, so a study
 * outlives an agent that dies.
 *
 * Not yet verified on Windows (see the project issues): the child is
 * assigned to the job right after uv_spawn returns, so a grandchild started
 * in that first instant could escape the job. */
#include "platform.h"

#include <stdlib.h>
#include <windows.h>

struct plat_tree {
  HANDLE job;
};

void plat_init(void) {
  SetConsoleOutputCP(CP_UTF8);
}

int plat_gmtime(time_t t, struct tm *out) {
  return gmtime_s(out, &t) == 0 ? 0 : -1;
}

unsigned plat_spawn_tree_flags(void) {
  /* a new process group (for Ctrl-Break), outside libuv's own job */
  return UV_PROCESS_DETACHED;
}

plat_tree *plat_tree_attach(uv_process_t *child, int *err) {
  *err = 0;
  plat_tree *tree = malloc(sizeof *tree);
  if (!tree) {
    *err = UV_ENOMEM;
    return NULL;
  }
  tree->job = CreateJobObjectW(NULL, NULL);
  if (!tree->job ||
      !AssignProcessToJobObject(tree->job, child->process_handle)) {
    *err = uv_translate_sys_error((int)GetLastError());
    if (tree->job)
      CloseHandle(tree->job);
    free(tree);
    return NULL;
  }
  return tree;
}

int plat_tree_kill(plat_tree *tree, uv_process_t *child, int pid) {
  if (tree && TerminateJobObject(tree->job, 1))
    return 0;
  if (uv_kill(pid, SIGKILL) == 0 || !child)
    return 0;
  return uv_process_kill(child, SIGKILL);
}

int plat_tree_terminate(plat_tree *tree, uv_process_t *child, int pid) {
  (void)tree;
  (void)child;
  /* a console program in its own group gets Ctrl-Break */
  if (GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, (DWORD)pid))
    return 0;
  return uv_translate_sys_error((int)GetLastError());
}

int plat_tree_signal(plat_tree *tree, uv_process_t *child, int pid,
                     int signum) {
  if (signum == SIGTERM || signum == SIGBREAK)
    return plat_tree_terminate(tree, child, pid);
  if (signum == SIGINT)
    return GenerateConsoleCtrlEvent(CTRL_C_EVENT, (DWORD)pid)
               ? 0
               : uv_translate_sys_error((int)GetLastError());
  return plat_tree_kill(tree, child, pid);
}

int plat_tree_alive(plat_tree *tree, int pid) {
  if (!tree)
    return uv_kill(pid, 0) == 0;
  JOBOBJECT_BASIC_ACCOUNTING_INFORMATION info;
  if (!QueryInformationJobObject(tree->job, JobObjectBasicAccountingInformation,
                                 &info, sizeof info, NULL))
    return 0;
  return info.ActiveProcesses > 0;
}

void plat_tree_free(plat_tree *tree) {
  if (!tree)
    return;
  CloseHandle(tree->job);
  free(tree);
}

int plat_pid_alive(int pid) {
  HANDLE h = OpenProcess(SYNCHRONIZE, FALSE, (DWORD)pid);
  if (!h)
    return 0;
  DWORD rc = WaitForSingleObject(h, 0);
  CloseHandle(h);
  return rc == WAIT_TIMEOUT;
}

int plat_pid_start_time(int pid, double *out) {
  HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  if (!h)
    return uv_translate_sys_error((int)GetLastError());
  FILETIME created, exited, kernel, user;
  BOOL ok = GetProcessTimes(h, &created, &exited, &kernel, &user);
  CloseHandle(h);
  if (!ok)
    return uv_translate_sys_error((int)GetLastError());
  *out = (double)(((unsigned long long)created.dwHighDateTime << 32) |
                  created.dwLowDateTime);
  return 0;
}
