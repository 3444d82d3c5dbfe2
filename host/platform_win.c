/* platform_win.c: the Windows side of platform.h.
 *
 * Children are started here rather than with uv_spawn, because libuv starts
 * a child running and can only put it in a Job Object afterwards: a
 * grandchild started in that first instant would escape the job. Here a
 * child that leads a tree is created suspended, in a new process group (so
 * that Ctrl-Break can be sent to it alone), put in a Job Object of its own
 * and only then resumed: every process it ever starts is in the job, and
 * the whole job is terminated at once. The job is not kill-on-close, so a
 * study outlives an agent that dies; it is named after the child's pid so
 * that a restarted agent can find it again (host.proc.attach). A child's
 * end is seen through RegisterWaitForSingleObject, which wakes the loop with
 * a uv_async_t.
 *
 * Also here: UTF-8 command-line arguments, and the service mode
 * (goliat-host --service NAME SCRIPT [ARG...], --service-reload NAME).
 */
#include "log.h"
#include "platform.h"

#include <fcntl.h>
#include <io.h>
#include <shellapi.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include <windows.h>

struct plat_tree {
  HANDLE job;
};

static void watch_service_events(void);

void plat_init(void) {
  SetConsoleOutputCP(CP_UTF8);
  watch_service_events();
  /* "\n" stays "\n" in output and logs, as on POSIX */
  _setmode(_fileno(stdin), _O_BINARY);
  _setmode(_fileno(stdout), _O_BINARY);
  _setmode(_fileno(stderr), _O_BINARY);
}

int plat_gmtime(time_t t, struct tm *out) {
  return gmtime_s(out, &t) == 0 ? 0 : -1;
}

/* ---- UTF-8 <-> UTF-16 ---- */

/* s as a malloc'd UTF-16 string, or NULL (invalid UTF-8, no memory). */
static wchar_t *to_wide(const char *s) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  if (n <= 0)
    return NULL;
  wchar_t *w = malloc((size_t)n * sizeof *w);
  if (w)
    MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n);
  return w;
}

/* w as a malloc'd UTF-8 string, or NULL. */
static char *to_utf8(const wchar_t *w) {
  int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
  if (n <= 0)
    return NULL;
  char *s = malloc((size_t)n);
  if (s)
    WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
  return s;
}

/* main()'s argv is in the ANSI code page: take the UTF-16 command line
 * instead. The strings live as long as the process. */
void plat_args(int *argc, char ***argv) {
  int n;
  wchar_t **w = CommandLineToArgvW(GetCommandLineW(), &n);
  if (!w)
    return;
  char **out = calloc((size_t)n + 1, sizeof *out);
  int ok = out != NULL;
  for (int i = 0; ok && i < n; i++)
    ok = (out[i] = to_utf8(w[i])) != NULL;
  LocalFree(w);
  if (!ok) {
    for (int i = 0; out && out[i]; i++)
      free(out[i]);
    free(out);
    return; /* keep the ANSI arguments */
  }
  *argc = n;
  *argv = out;
}

/* ---- building a child's command line, environment and program path ---- */

/* Append a quoted as one argument that CommandLineToArgvW and the C
 * runtime read back unchanged; d has room for 2 * len + 3 characters. */
static wchar_t *append_arg(wchar_t *d, const wchar_t *a) {
  if (*a && !wcspbrk(a, L" \t\n\v\"")) {
    size_t n = wcslen(a);
    memcpy(d, a, n * sizeof *d);
    return d + n;
  }
  *d++ = L'"';
  for (;;) {
    size_t bs = 0;
    while (*a == L'\\') {
      a++;
      bs++;
    }
    if (!*a) {
      for (size_t i = 0; i < 2 * bs; i++)
        *d++ = L'\\';
      break;
    }
    size_t n = *a == L'"' ? 2 * bs + 1 : bs;
    for (size_t i = 0; i < n; i++)
      *d++ = L'\\';
    *d++ = *a++;
  }
  *d++ = L'"';
  return d;
}

/* The command line for args (UTF-8, NULL-terminated), malloc'd. */
static wchar_t *make_cmdline(char *const *args, DWORD *err) {
  size_t count = 0;
  while (args[count])
    count++;
  wchar_t **w = calloc(count + 1, sizeof *w);
  size_t room = 1;
  wchar_t *cmd = NULL;
  *err = ERROR_OUTOFMEMORY;
  if (!w)
    return NULL;
  for (size_t i = 0; i < count; i++) {
    if (!(w[i] = to_wide(args[i]))) {
      *err = ERROR_NO_UNICODE_TRANSLATION;
      goto done;
    }
    room += 2 * wcslen(w[i]) + 3 + 1;
  }
  cmd = malloc(room * sizeof *cmd);
  if (cmd) {
    wchar_t *d = cmd;
    for (size_t i = 0; i < count; i++) {
      if (i > 0)
        *d++ = L' ';
      d = append_arg(d, w[i]);
    }
    *d = L'\0';
    *err = 0;
  }
done:
  for (size_t i = 0; i < count; i++)
    free(w[i]);
  free(w);
  return cmd;
}

static int env_name_cmp(const void *a, const void *b) {
  const wchar_t *x = *(wchar_t *const *)a, *y = *(wchar_t *const *)b;
  const wchar_t *xe = wcschr(x + 1, L'='), *ye = wcschr(y + 1, L'=');
  int xl = (int)(xe ? xe - x : (ptrdiff_t)wcslen(x));
  int yl = (int)(ye ? ye - y : (ptrdiff_t)wcslen(y));
  int c = CompareStringOrdinal(x, xl, y, yl, TRUE);
  return c == CSTR_LESS_THAN ? -1 : c == CSTR_GREATER_THAN ? 1 : 0;
}

/* A UTF-16 environment block from "NAME=value" strings, sorted by name as
 * Windows expects; *path points at its PATH value (or NULL). */
static wchar_t *make_env(char *const *env, const wchar_t **path, DWORD *err) {
  size_t count = 0, room = 2;
  while (env[count])
    count++;
  wchar_t **w = calloc(count + 1, sizeof *w);
  wchar_t *block = NULL;
  *err = ERROR_OUTOFMEMORY;
  *path = NULL;
  if (!w)
    return NULL;
  for (size_t i = 0; i < count; i++) {
    if (!(w[i] = to_wide(env[i]))) {
      *err = ERROR_NO_UNICODE_TRANSLATION;
      goto done;
    }
    room += wcslen(w[i]) + 1;
  }
  qsort(w, count, sizeof *w, env_name_cmp);
  block = malloc(room * sizeof *block);
  if (block) {
    wchar_t *d = block;
    for (size_t i = 0; i < count; i++) {
      size_t n = wcslen(w[i]) + 1;
      memcpy(d, w[i], n * sizeof *d);
      if (_wcsnicmp(d, L"PATH=", 5) == 0)
        *path = d + 5;
      d += n;
    }
    if (d == block)
      *d++ = L'\0';
    *d = L'\0';
    *err = 0;
  }
done:
  for (size_t i = 0; i < count; i++)
    free(w[i]);
  free(w);
  return block;
}

static int is_file(const wchar_t *p) {
  DWORD a = GetFileAttributesW(p);
  return a != INVALID_FILE_ATTRIBUTES && !(a & FILE_ATTRIBUTE_DIRECTORY);
}

/* dir (dlen characters, may be 0) joined with name and ext, malloc'd, if
 * that file exists. */
static wchar_t *try_file(const wchar_t *dir, size_t dlen, const wchar_t *name,
                         const wchar_t *ext) {
  size_t nlen = wcslen(name), elen = wcslen(ext);
  wchar_t *p = malloc((dlen + nlen + elen + 2) * sizeof *p);
  if (!p)
    return NULL;
  size_t k = dlen;
  memcpy(p, dir, dlen * sizeof *p);
  if (k > 0 && p[k - 1] != L'\\' && p[k - 1] != L'/')
    p[k++] = L'\\';
  memcpy(p + k, name, nlen * sizeof *p);
  memcpy(p + k + nlen, ext, (elen + 1) * sizeof *p);
  if (is_file(p))
    return p;
  free(p);
  return NULL;
}

/* name in dir as libuv looks for it: as given when it has an extension,
 * then with .com and .exe appended. */
static wchar_t *find_in(const wchar_t *dir, size_t dlen, const wchar_t *name) {
  const wchar_t *base = name;
  for (const wchar_t *s = name; *s; s++)
    if (*s == L'\\' || *s == L'/' || *s == L':')
      base = s + 1;
  wchar_t *p = NULL;
  if (wcschr(base, L'.'))
    p = try_file(dir, dlen, name, L"");
  if (!p)
    p = try_file(dir, dlen, name, L".com");
  if (!p)
    p = try_file(dir, dlen, name, L".exe");
  return p;
}

/* The program to start: a name with a folder in it relative to cwd, a bare
 * name on path (not in the current folder: as on POSIX). */
static wchar_t *find_program(const wchar_t *file, const wchar_t *cwd,
                             const wchar_t *path) {
  if (wcspbrk(file, L"\\/:")) {
    int absolute =
        file[0] == L'\\' || file[0] == L'/' || (file[0] && file[1] == L':');
    return absolute ? find_in(L"", 0, file) : find_in(cwd, wcslen(cwd), file);
  }
  for (const wchar_t *s = path; s && *s;) {
    const wchar_t *end = wcschr(s, L';');
    size_t len = end ? (size_t)(end - s) : wcslen(s);
    const wchar_t *dir = s;
    if (len >= 2 && dir[0] == L'"' && dir[len - 1] == L'"') {
      dir++;
      len -= 2;
    }
    if (len > 0) {
      wchar_t *p = find_in(dir, len, file);
      if (p)
        return p;
    }
    s = end ? end + 1 : NULL;
  }
  return NULL;
}

/* A malloc'd copy of the current directory, or of PATH (NULL if unset). */
static wchar_t *current_dir(void) {
  DWORD n = GetCurrentDirectoryW(0, NULL);
  wchar_t *w = n ? malloc(n * sizeof *w) : NULL;
  if (w && GetCurrentDirectoryW(n, w) >= n) {
    free(w);
    w = NULL;
  }
  return w;
}

static wchar_t *env_path(void) {
  DWORD n = GetEnvironmentVariableW(L"PATH", NULL, 0);
  wchar_t *w = n ? malloc(n * sizeof *w) : NULL;
  if (w && GetEnvironmentVariableW(L"PATH", w, n) >= n) {
    free(w);
    w = NULL;
  }
  return w;
}

/* An inheritable handle for the child's stdio slot i: a duplicate of the
 * fd it inherits, or the NUL device. */
static HANDLE child_stdio(const uv_process_options_t *o, int i) {
  HANDLE h = INVALID_HANDLE_VALUE;
  if (i < o->stdio_count && (o->stdio[i].flags & UV_INHERIT_FD))
    h = (HANDLE)uv_get_osfhandle(o->stdio[i].data.fd);
  HANDLE self = GetCurrentProcess(), dup = INVALID_HANDLE_VALUE;
  if (h != INVALID_HANDLE_VALUE && h != NULL &&
      DuplicateHandle(self, h, self, &dup, 0, TRUE, DUPLICATE_SAME_ACCESS))
    return dup;
  SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
  return CreateFileW(L"NUL", i == 0 ? GENERIC_READ : GENERIC_WRITE,
                     FILE_SHARE_READ | FILE_SHARE_WRITE, &sa, OPEN_EXISTING, 0,
                     NULL);
}

/* ---- the boot ---- */

/* the boot count that Windows raises at each start */
#define BOOT_ID_KEY                                                            \
  "SYSTEM\\CurrentControlSet\\Control\\Session Manager\\Memory "               \
  "Management\\PrefetchParameters"

int plat_boot_id(char *buf, size_t size) {
  DWORD value = 0, len = sizeof value;
  LSTATUS rc = RegGetValueW(HKEY_LOCAL_MACHINE, L"" BOOT_ID_KEY, L"BootId",
                            RRF_RT_REG_DWORD, NULL, &value, &len);
  if (rc != ERROR_SUCCESS) {
    int err = uv_translate_sys_error((int)rc);
    snprintf(buf, size, "cannot read BootId in HKLM\\%s: %s (error %ld)",
             BOOT_ID_KEY, uv_strerror(err), (long)rc);
    return err;
  }
  snprintf(buf, size, "%lu", (unsigned long)value);
  return 0;
}

/* ---- child processes ---- */

struct plat_child {
  uv_async_t async; /* wakes the loop when the process has ended */
  HANDLE process;
  HANDLE wait; /* RegisterWaitForSingleObject's, until closed */
  int pid;
  int done;        /* exit delivered, or watch closed */
  int kill_signal; /* SIGKILL once the host killed it */
  plat_exit_fn exit_fn;
  plat_closed_fn closed_fn;
  void *data;
};

/* On a thread of the system's pool. */
static VOID CALLBACK on_process_ended(PVOID arg, BOOLEAN timed_out) {
  (void)timed_out;
  plat_child *c = arg;
  uv_async_send(&c->async);
}

static void on_async(uv_async_t *a) {
  plat_child *c = a->data;
  if (c->done || WaitForSingleObject(c->process, 0) != WAIT_OBJECT_0)
    return;
  DWORD code = 0;
  GetExitCodeProcess(c->process, &code);
  c->done = 1;
  c->exit_fn(c->data, (int64_t)code, c->kill_signal);
}

static void on_async_closed(uv_handle_t *h) {
  plat_child *c = h->data;
  CloseHandle(c->process);
  if (c->closed_fn)
    c->closed_fn(c->data);
  free(c);
}

/* A Job Object for the tree of pid, named so that it can be found again. */
static HANDLE make_job(int pid) {
  char name[64];
  snprintf(name, sizeof name, "Local\\goliat-host-tree-%d", pid);
  SetLastError(0);
  HANDLE job = CreateJobObjectA(NULL, name);
  if (job && GetLastError() == ERROR_ALREADY_EXISTS) {
    /* an earlier tree of a process with the same pid still runs */
    CloseHandle(job);
    job = CreateJobObjectA(NULL, NULL);
  }
  if (!job)
    return NULL;
  /* a crash in the tree ends that process instead of waiting on an error
   * dialog nobody sees */
  JOBOBJECT_EXTENDED_LIMIT_INFORMATION info;
  memset(&info, 0, sizeof info);
  info.BasicLimitInformation.LimitFlags =
      JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
  SetInformationJobObject(job, JobObjectExtendedLimitInformation, &info,
                          sizeof info);
  return job;
}

int plat_spawn(uv_loop_t *loop, const uv_process_options_t *o, int new_tree,
               plat_exit_fn exit_fn, void *data, plat_child **child,
               plat_tree **tree) {
  wchar_t *file = NULL, *cwd = NULL, *cmd = NULL, *env = NULL, *app = NULL;
  wchar_t *own_path = NULL;
  const wchar_t *path = NULL;
  HANDLE stdio[3] = {INVALID_HANDLE_VALUE, INVALID_HANDLE_VALUE,
                     INVALID_HANDLE_VALUE};
  PROCESS_INFORMATION pi = {0};
  plat_child *c = NULL;
  plat_tree *t = NULL;
  DWORD err = 0;

  if (!(file = to_wide(o->file))) {
    err = ERROR_NO_UNICODE_TRANSLATION;
    goto done;
  }
  if (o->cwd ? !(cwd = to_wide(o->cwd)) : !(cwd = current_dir())) {
    err = o->cwd ? ERROR_NO_UNICODE_TRANSLATION : GetLastError();
    goto done;
  }
  if (!(cmd = make_cmdline(o->args, &err)))
    goto done;
  if (o->env && !(env = make_env(o->env, &path, &err)))
    goto done;
  if (!o->env)
    path = own_path = env_path();
  if (!(app = find_program(file, cwd, path))) {
    err = ERROR_FILE_NOT_FOUND;
    goto done;
  }
  for (int i = 0; i < 3; i++)
    if ((stdio[i] = child_stdio(o, i)) == INVALID_HANDLE_VALUE) {
      err = GetLastError();
      goto done;
    }
  if (!(c = calloc(1, sizeof *c))) {
    err = ERROR_OUTOFMEMORY;
    goto done;
  }

  STARTUPINFOW si;
  memset(&si, 0, sizeof si);
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES | STARTF_USESHOWWINDOW;
  si.wShowWindow =
      (o->flags & UV_PROCESS_WINDOWS_HIDE) ? SW_HIDE : SW_SHOWDEFAULT;
  si.hStdInput = stdio[0];
  si.hStdOutput = stdio[1];
  si.hStdError = stdio[2];
  /* Not DETACHED_PROCESS (as uv_spawn does): the child shares our console,
   * so that Ctrl-Break can reach its group. */
  DWORD flags = CREATE_UNICODE_ENVIRONMENT | CREATE_SUSPENDED;
  if (new_tree)
    flags |= CREATE_NEW_PROCESS_GROUP;
  if (!CreateProcessW(app, cmd, NULL, NULL, TRUE, flags, env,
                      o->cwd ? cwd : NULL, &si, &pi)) {
    err = GetLastError();
    goto done;
  }

  if (new_tree) {
    HANDLE job = make_job((int)pi.dwProcessId);
    if (job && AssignProcessToJobObject(job, pi.hProcess) &&
        (t = malloc(sizeof *t)) != NULL) {
      t->job = job;
    } else {
      DWORD e = GetLastError();
      host_log(LOG_WARN,
               "process %lu: cannot put it in a Job Object (%s): its "
               "descendants cannot be stopped with it",
               (unsigned long)pi.dwProcessId,
               uv_strerror(uv_translate_sys_error((int)e)));
      if (job)
        CloseHandle(job);
    }
  }
  c->process = pi.hProcess;
  c->pid = (int)pi.dwProcessId;
  c->exit_fn = exit_fn;
  c->data = data;
  c->async.data = c;
  if (uv_async_init(loop, &c->async, on_async) != 0) {
    err = ERROR_OUTOFMEMORY;
    TerminateProcess(pi.hProcess, 1);
    CloseHandle(pi.hProcess);
    free(c);
    c = NULL;
  } else {
    if (!RegisterWaitForSingleObject(&c->wait, pi.hProcess, on_process_ended, c,
                                     INFINITE, WT_EXECUTEONLYONCE)) {
      err = GetLastError();
      c->wait = NULL;
    } else if (ResumeThread(pi.hThread) == (DWORD)-1) {
      err = GetLastError();
    }
    if (err) {
      TerminateProcess(pi.hProcess, 1);
      plat_child_close(c, NULL); /* frees c and the process handle */
      c = NULL;
    }
  }
  CloseHandle(pi.hThread);
  if (err) {
    plat_tree_free(t);
    t = NULL;
  }

done:
  for (int i = 0; i < 3; i++)
    if (stdio[i] != INVALID_HANDLE_VALUE)
      CloseHandle(stdio[i]);
  free(file);
  free(cwd);
  free(cmd);
  free(env);
  free(app);
  free(own_path);
  if (err) {
    if (c && !pi.hProcess)
      free(c); /* CreateProcessW failed */
    return uv_translate_sys_error((int)err);
  }
  *child = c;
  *tree = t;
  return 0;
}

int plat_child_pid(const plat_child *c) {
  return c->pid;
}

void plat_child_close(plat_child *c, plat_closed_fn closed_fn) {
  c->closed_fn = closed_fn;
  c->done = 1;
  if (c->wait) {
    /* waits until a callback under way has returned */
    UnregisterWaitEx(c->wait, INVALID_HANDLE_VALUE);
    c->wait = NULL;
  }
  uv_close((uv_handle_t *)&c->async, on_async_closed);
}

plat_tree *plat_tree_find(int pid) {
  char name[64];
  snprintf(name, sizeof name, "Local\\goliat-host-tree-%d", pid);
  HANDLE job =
      OpenJobObjectA(JOB_OBJECT_QUERY | JOB_OBJECT_TERMINATE, FALSE, name);
  if (!job)
    return NULL;
  /* is pid really in it (a job named after an earlier process of the same
   * pid may still run)? IsProcessInJob wants full query rights on wine */
  HANDLE proc = OpenProcess(PROCESS_QUERY_INFORMATION, FALSE, (DWORD)pid);
  if (!proc)
    proc = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  BOOL in = FALSE;
  if (!proc || !IsProcessInJob(proc, job, &in) || !in) {
    if (proc)
      CloseHandle(proc);
    CloseHandle(job);
    return NULL;
  }
  CloseHandle(proc);
  plat_tree *t = malloc(sizeof *t);
  if (!t) {
    CloseHandle(job);
    return NULL;
  }
  t->job = job;
  return t;
}

int plat_tree_kill(plat_tree *tree, plat_child *child, int pid) {
  if (child)
    child->kill_signal = SIGKILL;
  if (tree && TerminateJobObject(tree->job, 1))
    return 0;
  if (child && !child->done)
    return TerminateProcess(child->process, 1)
               ? 0
               : uv_translate_sys_error((int)GetLastError());
  int rc = uv_kill(pid, SIGKILL);
  return rc == UV_ESRCH ? 0 : rc;
}

int plat_tree_terminate(plat_tree *tree, plat_child *child, int pid) {
  /* the root leads its own process group on our console: Ctrl-Break goes
   * to every process of that group (Ctrl-C cannot be sent to a group) */
  if (GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, (DWORD)pid))
    return 0;
  /* Not on our console (we have none, or the tree was started by an
   * earlier agent), or no console events at all (wine): nothing can ask
   * it to stop, so waiting for a grace period would only delay the kill. */
  static int warned;
  if (!warned++)
    host_log(LOG_WARN,
             "cannot send Ctrl-Break to process group %d (error %lu): "
             "killing process trees at once instead",
             pid, (unsigned long)GetLastError());
  return plat_tree_kill(tree, child, pid);
}

int plat_tree_signal(plat_tree *tree, plat_child *child, int pid, int signum) {
  if (signum == SIGTERM || signum == SIGBREAK || signum == SIGINT)
    return plat_tree_terminate(tree, child, pid);
  return plat_tree_kill(tree, child, pid);
}

int plat_tree_alive(plat_tree *tree, int pid) {
  if (!tree)
    return plat_pid_alive(pid);
  JOBOBJECT_BASIC_ACCOUNTING_INFORMATION info;
  if (!QueryInformationJobObject(tree->job, JobObjectBasicAccountingInformation,
                                 &info, sizeof info, NULL))
    return plat_pid_alive(pid);
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

/* Held until the process ends: see plat_keep_tree. */
static HANDLE kept_job;

int plat_keep_tree(void) {
  if (kept_job)
    return 0;
  char name[64];
  snprintf(name, sizeof name, "Local\\goliat-host-tree-%lu",
           (unsigned long)GetCurrentProcessId());
  HANDLE job = OpenJobObjectA(JOB_OBJECT_QUERY, FALSE, name);
  if (!job)
    return uv_translate_sys_error((int)GetLastError());
  BOOL in = FALSE;
  if (!IsProcessInJob(GetCurrentProcess(), job, &in) || !in) {
    /* a job of an earlier process of our pid: not ours to keep */
    CloseHandle(job);
    return UV_ENOENT;
  }
  kept_job = job;
  return 0;
}

int plat_orphans(const int *own, size_t n, int signum) {
  (void)own;
  (void)n;
  (void)signum;
  return 0; /* a tree's Job Object holds every descendant, orphaned or not */
}

struct plat_lock {
  HANDLE h;
};

int plat_lock_file(const char *path, plat_lock **lock) {
  wchar_t *w = to_wide(path);
  if (!w)
    return UV_EINVAL;
  /* not inheritable (no security attributes): children do not hold it */
  HANDLE h = CreateFileW(w, GENERIC_READ | GENERIC_WRITE,
                         FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_ALWAYS,
                         FILE_ATTRIBUTE_NORMAL, NULL);
  free(w);
  if (h == INVALID_HANDLE_VALUE)
    return uv_translate_sys_error((int)GetLastError());
  OVERLAPPED ov = {0};
  if (!LockFileEx(h, LOCKFILE_EXCLUSIVE_LOCK | LOCKFILE_FAIL_IMMEDIATELY, 0, 1,
                  0, &ov)) {
    DWORD err = GetLastError();
    CloseHandle(h);
    return err == ERROR_LOCK_VIOLATION ? UV_EBUSY
                                       : uv_translate_sys_error((int)err);
  }
  *lock = malloc(sizeof **lock);
  if (!*lock) {
    CloseHandle(h);
    return UV_ENOMEM;
  }
  (*lock)->h = h;
  return 0;
}

void plat_unlock(plat_lock *lock) {
  if (lock) {
    CloseHandle(lock->h); /* releases the lock */
    free(lock);
  }
}

int plat_pid_start_time(int pid, long long *out) {
  HANDLE h = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
  if (!h)
    return uv_translate_sys_error((int)GetLastError());
  FILETIME created, exited, kernel, user;
  BOOL ok = GetProcessTimes(h, &created, &exited, &kernel, &user);
  CloseHandle(h);
  if (!ok)
    return uv_translate_sys_error((int)GetLastError());
  *out = (long long)(((unsigned long long)created.dwHighDateTime << 32) |
                     created.dwLowDateTime);
  return 0;
}

/* ---- the service: goliat-host --service NAME SCRIPT [ARG...] ----
 *
 * The service process supervises the script rather than running it: it
 * starts `goliat-host SCRIPT [ARG...]` as a child in a process group of its
 * own, on a console of its own (a service has none; in session 0 nobody
 * sees it), so that a service stop reaches the script as Ctrl-Break, its
 * SIGBREAK handler, exactly as an operator's Ctrl-Break would: the agent
 * then stops its study's tree, reports, and exits. A child that is still
 * running after the study grace period (GOLIAT_STUDY_GRACE, default 30 s)
 * plus 30 s is killed. A child that ends on its own with an exit code other
 * than 0 (a crash, bad settings) is started again after RESTART_DELAY_MS,
 * like systemd's Restart=always; with exit code 0 (the agent chose to end:
 * idle, GOLIAT_IDLE_AFTER) the service stops, like the packaged unit's
 * RestartPreventExitStatus=0. The child runs in the folder of
 * goliat-host.exe.
 *
 * The log is NAME.log in that folder unless the service's environment (the
 * registry's Environment value) sets GOLIAT_LOG_FILE: the supervisor sets
 * GOLIAT_LOG_FILE for its child, which writes its log there and rotates it
 * by size (log.c). The supervisor's own lines, and whatever the child
 * writes on stdout and stderr (a script's fatal error, the warning of a log
 * file that cannot be written), are appended to the same file through a
 * pipe and a thread; the supervisor opens the file for each write only, so
 * that the child's rotation can always rename it. */

#define RESTART_DELAY_MS 10000
#define STOP_EVENT_VAR L"GOLIAT_SERVICE_STOP_EVENT"
#define RELOAD_EVENT_VAR L"GOLIAT_SERVICE_RELOAD_EVENT"
/* a reload, as `sc control NAME 128` sends it (128-255 are the service's
 * own); goliat-host --service-reload sends SERVICE_CONTROL_PARAMCHANGE */
#define SERVICE_CONTROL_RELOAD 128

/* libuv's own dispatch of a console control event to the uv_signal_t
 * watchers of signum (src/win/signal.c; not in uv.h). It runs the same
 * path as a Ctrl-Break typed in the console. */
int uv__signal_dispatch(int signum);

static HANDLE stop_wait, reload_wait;

static VOID CALLBACK on_service_stop(PVOID arg, BOOLEAN timed_out) {
  (void)arg;
  (void)timed_out;
  /* as for a real Ctrl-Break: without a handler, the process ends (during
   * host.restart(), a signal the ended run had a handler for is still
   * watched: sys.c holds it for the next run's handler) */
  if (!uv__signal_dispatch(SIGBREAK))
    ExitProcess(STATUS_CONTROL_C_EXIT);
}

static VOID CALLBACK on_service_reload(PVOID arg, BOOLEAN timed_out) {
  (void)arg;
  (void)timed_out;
  /* to the script's host.sys.on_signal("reload") handlers; without one,
   * nothing happens (held for the next run during host.restart(), as
   * above) */
  uv__signal_dispatch(PLAT_SIGRELOAD);
}

/* Wait, on the thread pool, for the event named in the variable var, and
 * call fn each time it is set. The variable is removed so that no
 * grandchild waits on it. */
static void watch_event(const wchar_t *var, WAITORTIMERCALLBACK fn,
                        HANDLE *wait) {
  wchar_t name[128];
  DWORD n = GetEnvironmentVariableW(var, name, 128);
  if (n == 0 || n >= 128)
    return;
  SetEnvironmentVariableW(var, NULL);
  HANDLE ev = OpenEventW(SYNCHRONIZE, FALSE, name);
  if (ev && !RegisterWaitForSingleObject(wait, ev, fn, NULL, INFINITE,
                                         WT_EXECUTEDEFAULT))
    CloseHandle(ev);
}

/* In the child of a service (see below): a stop of the service arrives as
 * an event named in GOLIAT_SERVICE_STOP_EVENT and becomes SIGBREAK, as a
 * Ctrl-Break would; console control events do not cross into a service
 * reliably. A reload arrives as the event named in
 * GOLIAT_SERVICE_RELOAD_EVENT and becomes PLAT_SIGRELOAD. */
static void watch_service_events(void) {
  uv_hrtime(); /* initialises libuv (its signal table) before any event */
  watch_event(STOP_EVENT_VAR, on_service_stop, &stop_wait);
  watch_event(RELOAD_EVENT_VAR, on_service_reload, &reload_wait);
}

static struct {
  wchar_t *name;
  char **argv; /* SCRIPT [ARG...], NULL-terminated */
  SERVICE_STATUS_HANDLE handle;
  HANDLE stop;          /* manual-reset event: a stop was asked for */
  HANDLE child_stop;    /* auto-reset event the child waits on (SIGBREAK) */
  HANDLE child_reload;  /* auto-reset event: reload (PLAT_SIGRELOAD) */
  wchar_t *log;         /* the log file: GOLIAT_LOG_FILE, or default_log */
  wchar_t *default_log; /* NAME.log next to goliat-host.exe */
  DWORD checkpoint;
} svc;

static HANDLE open_for_append(const wchar_t *path) {
  return CreateFileW(path, FILE_APPEND_DATA,
                     FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                     NULL, OPEN_ALWAYS, FILE_ATTRIBUTE_NORMAL, NULL);
}

/* Append data to the log, opened for this write only (the child may rename
 * it at any time); to NAME.log next to the exe when the log file cannot be
 * opened, so that the reason, which the child writes on stderr, is found
 * somewhere. Any thread. */
static void svc_append(const char *data, DWORD len) {
  HANDLE h = svc.log ? open_for_append(svc.log) : INVALID_HANDLE_VALUE;
  if (h == INVALID_HANDLE_VALUE && svc.default_log &&
      svc.log != svc.default_log)
    h = open_for_append(svc.default_log);
  if (h == INVALID_HANDLE_VALUE)
    return;
  DWORD written;
  WriteFile(h, data, len, &written, NULL);
  CloseHandle(h);
}

static void svc_log(const char *fmt, ...) HOST_PRINTF(1, 2);

static void svc_log(const char *fmt, ...) {
  char line[1024];
  SYSTEMTIME t;
  GetSystemTime(&t);
  int n = snprintf(
      line, sizeof line,
      "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ info  service: ", t.wYear, t.wMonth,
      t.wDay, t.wHour, t.wMinute, t.wSecond, t.wMilliseconds);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0)
    m = 0;
  n += m;
  if (n > (int)sizeof line - 2)
    n = (int)sizeof line - 2;
  line[n++] = '\n';
  svc_append(line, (DWORD)n);
}

static void svc_set(DWORD state, DWORD wait_hint) {
  SERVICE_STATUS st;
  memset(&st, 0, sizeof st);
  st.dwServiceType = SERVICE_WIN32_OWN_PROCESS;
  st.dwCurrentState = state;
  if (state == SERVICE_RUNNING)
    st.dwControlsAccepted = SERVICE_ACCEPT_STOP | SERVICE_ACCEPT_SHUTDOWN |
                            SERVICE_ACCEPT_PARAMCHANGE;
  st.dwWin32ExitCode = NO_ERROR;
  st.dwWaitHint = wait_hint;
  if (state != SERVICE_RUNNING && state != SERVICE_STOPPED)
    st.dwCheckPoint = ++svc.checkpoint;
  SetServiceStatus(svc.handle, &st);
}

static DWORD WINAPI svc_control(DWORD control, DWORD type, LPVOID data,
                                LPVOID ctx) {
  (void)type;
  (void)data;
  (void)ctx;
  switch (control) {
  case SERVICE_CONTROL_STOP:
  case SERVICE_CONTROL_SHUTDOWN:
    SetEvent(svc.stop);
    return NO_ERROR;
  case SERVICE_CONTROL_PARAMCHANGE:
  case SERVICE_CONTROL_RELOAD:
    svc_log("reload requested: passed on to goliat-host");
    if (svc.child_reload)
      SetEvent(svc.child_reload);
    return NO_ERROR;
  case SERVICE_CONTROL_INTERROGATE:
    return NO_ERROR;
  default:
    return ERROR_CALL_NOT_IMPLEMENTED;
  }
}

/* The supervisor itself ignores console events; its child gets them. */
static BOOL WINAPI svc_ignore_ctrl(DWORD type) {
  (void)type;
  return TRUE;
}

/* Path of goliat-host.exe, malloc'd. */
static wchar_t *exe_path(void) {
  DWORD size = MAX_PATH;
  for (;;) {
    wchar_t *w = malloc(size * sizeof *w);
    if (!w)
      return NULL;
    DWORD n = GetModuleFileNameW(NULL, w, size);
    if (n > 0 && n < size)
      return w;
    free(w);
    if (n == 0 || size > 32768)
      return NULL;
    size *= 2;
  }
}

/* Copies what the child writes on stdout and stderr to the log, until
 * every holder of the pipe's write end has closed it (the child, and the
 * studies that inherited it). */
static DWORD WINAPI svc_forward(LPVOID arg) {
  HANDLE in = arg;
  char buf[4096];
  DWORD n;
  while (ReadFile(in, buf, sizeof buf, &n, NULL) && n > 0)
    svc_append(buf, n);
  CloseHandle(in);
  return 0;
}

/* Start goliat-host SCRIPT [ARG...] in a new process group, its stdout and
 * stderr forwarded to the log by a thread (*forward, or NULL); returns its
 * process handle, or NULL. */
static HANDLE svc_start_child(const wchar_t *exe, DWORD *pid, HANDLE *forward) {
  char *self = to_utf8(exe);
  size_t n = 0;
  while (svc.argv[n])
    n++;
  char **args = calloc(n + 2, sizeof *args);
  wchar_t *cmd = NULL;
  DWORD err = ERROR_OUTOFMEMORY;
  if (self && args) {
    args[0] = self;
    memcpy(args + 1, svc.argv, n * sizeof *args);
    cmd = make_cmdline(args, &err);
  }
  free(args);
  free(self);
  if (!cmd) {
    SetLastError(err);
    return NULL;
  }
  SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
  HANDLE in = CreateFileW(L"NUL", GENERIC_READ, FILE_SHARE_READ, &sa,
                          OPEN_EXISTING, 0, NULL);
  HANDLE out = INVALID_HANDLE_VALUE, pipe_in = NULL;
  *forward = NULL;
  if (CreatePipe(&pipe_in, &out, &sa, 0))
    SetHandleInformation(pipe_in, HANDLE_FLAG_INHERIT, 0);
  else
    out = CreateFileW(L"NUL", GENERIC_WRITE, FILE_SHARE_WRITE, &sa,
                      OPEN_EXISTING, 0, NULL);
  STARTUPINFOW si;
  memset(&si, 0, sizeof si);
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = in;
  si.hStdOutput = out;
  si.hStdError = out;
  PROCESS_INFORMATION pi;
  BOOL ok =
      CreateProcessW(exe, cmd, NULL, NULL, TRUE,
                     CREATE_NEW_PROCESS_GROUP | CREATE_UNICODE_ENVIRONMENT,
                     NULL, NULL, &si, &pi);
  err = GetLastError();
  if (in != INVALID_HANDLE_VALUE)
    CloseHandle(in);
  if (out != INVALID_HANDLE_VALUE)
    CloseHandle(out);
  free(cmd);
  if (pipe_in && (!ok || !(*forward = CreateThread(NULL, 0, svc_forward,
                                                   pipe_in, 0, NULL))))
    CloseHandle(pipe_in);
  if (!ok) {
    SetLastError(err);
    return NULL;
  }
  CloseHandle(pi.hThread);
  *pid = pi.dwProcessId;
  return pi.hProcess;
}

/* How long a stopping child may take: the study's grace period + 30 s. */
static DWORD svc_stop_timeout_ms(void) {
  char buf[64];
  DWORD n = GetEnvironmentVariableA("GOLIAT_STUDY_GRACE", buf, sizeof buf);
  double grace = 30;
  if (n > 0 && n < sizeof buf) {
    char *end;
    double v = strtod(buf, &end);
    if (*end == '\0' && v >= 0 && v < 86400)
      grace = v;
  }
  return (DWORD)((grace + 30) * 1000);
}

/* Stop the child: SIGBREAK, then a kill when it takes too long. */
static void svc_stop_child(HANDLE child, DWORD pid) {
  DWORD limit = svc_stop_timeout_ms(), waited = 0;
  svc_log("stop requested: SIGBREAK to goliat-host (pid %lu)",
          (unsigned long)pid);
  svc_set(SERVICE_STOP_PENDING, 5000);
  SetEvent(svc.child_stop);
  while (WaitForSingleObject(child, 1000) == WAIT_TIMEOUT) {
    waited += 1000;
    if (waited >= limit) {
      svc_log("goliat-host still runs after %lu s: killing it",
              (unsigned long)(waited / 1000));
      TerminateProcess(child, 1);
      WaitForSingleObject(child, 5000);
      break;
    }
    svc_set(SERVICE_STOP_PENDING, 5000);
  }
}

static void svc_run(void) {
  wchar_t *exe = exe_path();
  if (!exe)
    return;
  /* work in the folder of goliat-host.exe, and log there unless
   * GOLIAT_LOG_FILE says where */
  wchar_t *slash = wcsrchr(exe, L'\\');
  size_t dlen = slash ? (size_t)(slash - exe) : 0;
  size_t nlen = wcslen(svc.name);
  wchar_t *log = malloc((dlen + nlen + 6) * sizeof *log);
  if (log) {
    memcpy(log, exe, dlen * sizeof *log);
    log[dlen] = L'\0';
    if (dlen > 0)
      SetCurrentDirectoryW(log);
    swprintf(log + dlen, nlen + 6, L"%ls%ls.log", dlen ? L"\\" : L"", svc.name);
  }
  svc.default_log = log;
  DWORD size = GetEnvironmentVariableW(L"GOLIAT_LOG_FILE", NULL, 0);
  if (size > 1) { /* the operator's, from the registry's Environment */
    svc.log = malloc(size * sizeof *svc.log);
    if (svc.log &&
        !GetEnvironmentVariableW(L"GOLIAT_LOG_FILE", svc.log, size)) {
      free(svc.log);
      svc.log = NULL; /* svc_append writes to default_log */
    }
  } else if (log) {
    svc.log = log;
    SetEnvironmentVariableW(L"GOLIAT_LOG_FILE", log); /* for the child */
  }
  /* a console for the child and its studies (Ctrl-Break between them) */
  if (!GetConsoleWindow() && AllocConsole()) {
    HWND w = GetConsoleWindow();
    if (w)
      ShowWindow(w, SW_HIDE);
  }
  SetConsoleCtrlHandler(svc_ignore_ctrl, TRUE);
  wchar_t stop_name[64];
  swprintf(stop_name, 64, L"Local\\goliat-host-service-stop-%lu",
           (unsigned long)GetCurrentProcessId());
  svc.child_stop = CreateEventW(NULL, FALSE, FALSE, stop_name);
  if (svc.child_stop)
    SetEnvironmentVariableW(STOP_EVENT_VAR, stop_name); /* inherited */
  wchar_t reload_name[64];
  swprintf(reload_name, 64, L"Local\\goliat-host-service-reload-%lu",
           (unsigned long)GetCurrentProcessId());
  svc.child_reload = CreateEventW(NULL, FALSE, FALSE, reload_name);
  if (svc.child_reload)
    SetEnvironmentVariableW(RELOAD_EVENT_VAR, reload_name);
  svc_set(SERVICE_RUNNING, 0);

  while (WaitForSingleObject(svc.stop, 0) != WAIT_OBJECT_0) {
    DWORD pid = 0;
    HANDLE forward;
    HANDLE child = svc_start_child(exe, &pid, &forward);
    if (!child) {
      svc_log("cannot start goliat-host: error %lu; trying again in %d s",
              (unsigned long)GetLastError(), RESTART_DELAY_MS / 1000);
      WaitForSingleObject(svc.stop, RESTART_DELAY_MS);
      continue;
    }
    svc_log("started goliat-host %s (pid %lu)", svc.argv[0],
            (unsigned long)pid);
    ResetEvent(svc.child_stop);
    if (svc.child_reload)
      ResetEvent(svc.child_reload);
    HANDLE handles[2] = {svc.stop, child};
    DWORD w = WaitForMultipleObjects(2, handles, FALSE, INFINITE);
    if (w == WAIT_OBJECT_0)
      svc_stop_child(child, pid);
    DWORD code = 0;
    GetExitCodeProcess(child, &code);
    CloseHandle(child);
    if (forward) {
      /* its last words before the line that says it exited; a study that
       * inherited the pipe keeps the thread going, so not for long */
      WaitForSingleObject(forward, 2000);
      CloseHandle(forward);
    }
    if (w == WAIT_OBJECT_0) {
      svc_log("goliat-host exited with code %lu; service stopped",
              (unsigned long)code);
      break;
    }
    if (code == 0) {
      /* the script chose to end (the agent idle for GOLIAT_IDLE_AFTER with
       * no GOLIAT_IDLE_COMMAND): not a crash, so not started again */
      svc_log("goliat-host exited with code 0 on its own; service stopped, "
              "not started again");
      break;
    }
    svc_log("goliat-host exited with code %lu; starting it again in %d s",
            (unsigned long)code, RESTART_DELAY_MS / 1000);
    WaitForSingleObject(svc.stop, RESTART_DELAY_MS);
  }
  free(exe);
}

static void WINAPI svc_main(DWORD argc, LPWSTR *argv) {
  (void)argc;
  (void)argv;
  svc.handle = RegisterServiceCtrlHandlerExW(svc.name, svc_control, NULL);
  if (!svc.handle)
    return;
  svc_set(SERVICE_START_PENDING, 10000);
  svc_run();
  svc_set(SERVICE_STOPPED, 0);
}

int plat_service_main(int argc, char **argv) {
  if (argc < 4) {
    fputs("usage: goliat-host --service NAME SCRIPT [ARG...]\n", stderr);
    return 2;
  }
  svc.name = to_wide(argv[2]);
  svc.argv = argv + 3;
  svc.stop = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (!svc.name || !svc.stop) {
    fputs("goliat-host: --service: invalid name or out of resources\n", stderr);
    return 2;
  }
  SERVICE_TABLE_ENTRYW table[] = {{svc.name, svc_main}, {NULL, NULL}};
  if (StartServiceCtrlDispatcherW(table))
    return 0;
  DWORD e = GetLastError();
  if (e == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
    fputs("goliat-host: --service is for the Windows service manager: "
          "install the service with sc.exe (see README-windows.txt)\n",
          stderr);
  else
    fprintf(stderr, "goliat-host: cannot run as a service: %s\n",
            uv_strerror(uv_translate_sys_error((int)e)));
  return 2;
}

/* goliat-host --service-reload NAME */
int plat_service_reload(int argc, char **argv) {
  if (argc != 3) {
    fputs("usage: goliat-host --service-reload NAME\n", stderr);
    return 2;
  }
  wchar_t *name = to_wide(argv[2]);
  SC_HANDLE scm = name ? OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT) : NULL;
  SC_HANDLE service =
      scm ? OpenServiceW(scm, name, SERVICE_PAUSE_CONTINUE) : NULL;
  SERVICE_STATUS st;
  BOOL ok =
      service && ControlService(service, SERVICE_CONTROL_PARAMCHANGE, &st);
  DWORD e = ok ? 0 : GetLastError();
  if (service)
    CloseServiceHandle(service);
  if (scm)
    CloseServiceHandle(scm);
  free(name);
  if (ok) {
    printf("goliat-host: asked the service %s to reload; its log says "
           "whether the new script was taken up\n",
           argv[2]);
    return 0;
  }
  const char *why;
  switch (e) {
  case ERROR_SERVICE_DOES_NOT_EXIST:
    why = "no such service";
    break;
  case ERROR_SERVICE_NOT_ACTIVE:
    why = "the service is not running";
    break;
  case ERROR_ACCESS_DENIED:
    why = "access denied (run it as an administrator)";
    break;
  case ERROR_INVALID_SERVICE_CONTROL:
    why = "the service does not take reloads (is it goliat-host --service?)";
    break;
  default:
    why = uv_strerror(uv_translate_sys_error((int)e));
  }
  fprintf(stderr, "goliat-host: cannot reload the service %s: %s\n", argv[2],
          why);
  return 1;
}

uv_os_sock_t plat_open_socket(int family, int type, int protocol) {
  /* not inherited by children (WSA_FLAG_NO_HANDLE_INHERIT) */
  return WSASocketW(family, type, protocol, NULL, 0,
                    WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
}

void plat_close_socket(uv_os_sock_t s) {
  closesocket(s);
}

/* ---- the watchdog's ticker: a timer-queue timer ---- */

static void (*ticker_fn)(void);
static HANDLE ticker_timer, ticker_thread;

static VOID CALLBACK on_ticker(PVOID arg, BOOLEAN fired) {
  (void)arg;
  (void)fired;
  /* the thread that runs Lua stands still while tick looks at it */
  if (SuspendThread(ticker_thread) == (DWORD)-1)
    return;
  ticker_fn();
  ResumeThread(ticker_thread);
}

int plat_ticker_start(void (*tick)(void), double period_s) {
  plat_ticker_stop();
  if (!DuplicateHandle(GetCurrentProcess(), GetCurrentThread(),
                       GetCurrentProcess(), &ticker_thread,
                       THREAD_SUSPEND_RESUME, FALSE, 0))
    return uv_translate_sys_error((int)GetLastError());
  ticker_fn = tick;
  DWORD ms = period_s < 0.001 ? 1 : (DWORD)(period_s * 1000);
  if (!CreateTimerQueueTimer(&ticker_timer, NULL, on_ticker, NULL, ms, ms,
                             WT_EXECUTEDEFAULT)) {
    int e = uv_translate_sys_error((int)GetLastError());
    CloseHandle(ticker_thread);
    ticker_thread = NULL;
    ticker_timer = NULL;
    return e;
  }
  return 0;
}

void plat_ticker_stop(void) {
  if (!ticker_timer)
    return;
  /* waits for a tick under way */
  DeleteTimerQueueTimer(NULL, ticker_timer, INVALID_HANDLE_VALUE);
  CloseHandle(ticker_thread);
  ticker_timer = ticker_thread = NULL;
}
