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
 * Also here: UTF-8 command-line arguments, the service mode (goliat-host
 * --service NAME SCRIPT [ARG...]), the same supervisor in a user's desktop
 * (--desktop NAME SCRIPT [ARG...]), the commands that reach them (--reload
 * NAME, --stop NAME) and those that install either (--install service,
 * --install desktop, --uninstall).
 */
#include "host.h"
#include "log.h"
#include "platform.h"

#include <ctype.h>
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

/* ---- the supervisor: goliat-host --service NAME SCRIPT [ARG...] and
 * goliat-host --desktop NAME SCRIPT [ARG...] ----
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
 * that the child's rotation can always rename it.
 *
 * --desktop runs the same supervisor (svc_run) in the session of a logged-on
 * user instead of as a service: the logon task of --install desktop starts
 * it, so that the agent, and the studies it starts, have that user's
 * desktop (GOLIAT's window, and the GPU as when the user starts it by
 * hand). What a service gets from the service manager it gets from named
 * events and from the session: see "the desktop supervisor" below. */

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
static void desk_console(void);

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
  int desktop; /* --desktop: in a user's session, not a service */
  wchar_t *name;
  char **argv;                  /* SCRIPT [ARG...], NULL-terminated */
  SERVICE_STATUS_HANDLE handle; /* a service's; NULL for --desktop */
  HANDLE stop;                  /* manual-reset event: a stop was asked for */
  HANDLE ended;                 /* manual-reset event: the supervisor is done */
  HANDLE reload;        /* --desktop: the named event --reload NAME sets */
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
  int n = snprintf(line, sizeof line,
                   "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ info  %s: ", t.wYear,
                   t.wMonth, t.wDay, t.wHour, t.wMinute, t.wSecond,
                   t.wMilliseconds, svc.desktop ? "desktop" : "service");
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
  if (!svc.handle)
    return; /* --desktop */
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
  if (svc.desktop) {
    desk_console();
  } else {
    /* a console for the child and its studies (Ctrl-Break between them) */
    if (!GetConsoleWindow() && AllocConsole()) {
      HWND w = GetConsoleWindow();
      if (w)
        ShowWindow(w, SW_HIDE);
    }
    SetConsoleCtrlHandler(svc_ignore_ctrl, TRUE);
  }
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
  if (svc.desktop) {
    DWORD session = 0;
    ProcessIdToSessionId(GetCurrentProcessId(), &session);
    svc_log("supervising goliat-host %s in session %lu", svc.argv[0],
            (unsigned long)session);
  }

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
      svc_log("goliat-host exited with code %lu; %s", (unsigned long)code,
              svc.desktop ? "the desktop supervisor ends" : "service stopped");
      break;
    }
    if (code == 0) {
      /* the script chose to end (the agent idle for GOLIAT_IDLE_AFTER with
       * no GOLIAT_IDLE_COMMAND): not a crash, so not started again */
      svc_log("goliat-host exited with code 0 on its own; %s, not started "
              "again",
              svc.desktop ? "the desktop supervisor ends" : "service stopped");
      break;
    }
    svc_log("goliat-host exited with code %lu; starting it again in %d s",
            (unsigned long)code, RESTART_DELAY_MS / 1000);
    WaitForSingleObject(svc.stop, RESTART_DELAY_MS);
  }
  free(exe);
  SetEvent(svc.ended); /* a logoff or a closed console may now go on */
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
  svc.ended = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (!svc.name || !svc.stop || !svc.ended) {
    fputs("goliat-host: --service: invalid name or out of resources\n", stderr);
    return 2;
  }
  SERVICE_TABLE_ENTRYW table[] = {{svc.name, svc_main}, {NULL, NULL}};
  if (StartServiceCtrlDispatcherW(table))
    return 0;
  DWORD e = GetLastError();
  if (e == ERROR_FAILED_SERVICE_CONTROLLER_CONNECT)
    fputs("goliat-host: --service is for the Windows service manager: "
          "install the service with goliat-host --install service (see "
          "README-windows.txt)\n",
          stderr);
  else
    fprintf(stderr, "goliat-host: cannot run as a service: %s\n",
            uv_strerror(uv_translate_sys_error((int)e)));
  return 2;
}

/* ---- the desktop supervisor: goliat-host --desktop NAME SCRIPT [ARG...] ----
 *
 * The logon task of --install desktop starts it in its user's session at
 * each logon. It runs svc_run as the service does; what a service hears
 * from the service manager it hears here from the session and from two
 * named events:
 *
 * - Logoff and shutdown: Windows sends WM_QUERYENDSESSION, then
 *   WM_ENDSESSION, to the top-level windows of the session, and ends a
 *   process once its window has handled WM_ENDSESSION. The supervisor keeps
 *   such a window, never shown (a message-only window gets neither), on a
 *   thread of its own, and handles WM_ENDSESSION by stopping the agent as a
 *   service stop does (its stop event: SIGBREAK), returning once the agent
 *   has exited or been killed. Console control events cannot do this:
 *   CTRL_LOGOFF_EVENT and CTRL_SHUTDOWN_EVENT reach services only, and no
 *   process that loads user32.dll (libuv does) hears them. Its shutdown
 *   level is raised, so that it is told before the session's processes of
 *   the default level, its agent among them. How long Windows waits is
 *   Windows' choice (a forced shutdown: a few seconds); the agent marks its
 *   work interrupted first thing, so that a stop cut short still has the
 *   study run again at the next start.
 * - goliat-host --stop NAME and --reload NAME set the events
 *   Global\goliat-host-desktop-NAME-stop and -reload (Local\ when the user
 *   may not create global names: not an administrator). The stop event
 *   also keeps a second supervisor of the same NAME from starting, and
 *   tells --install and --uninstall that one runs.
 * - Ctrl-C, Ctrl-Break and closing the console stop it too (started by
 *   hand in a console); a console of its own, as the logon task gives it,
 *   is hidden: its log has all the console would show. */

#define DESK_EVENT_CHARS 128

static void desk_event_name(wchar_t *buf, const wchar_t *ns,
                            const wchar_t *name, const wchar_t *kind) {
  /* (a NAME too long for it names nothing: opening "" fails) */
  if (wcslen(name) > 64 ||
      swprintf(buf, DESK_EVENT_CHARS, L"%ls\\goliat-host-desktop-%ls-%ls", ns,
               name, kind) < 0)
    buf[0] = L'\0';
}

/* Open the desktop supervisor's event kind, global or local; NULL with
 * ERROR_FILE_NOT_FOUND when none runs, or the error that stopped it
 * (ERROR_ACCESS_DENIED: not elevated, when the supervisor is). */
static HANDLE desk_open_event(const wchar_t *name, const wchar_t *kind,
                              DWORD access) {
  static const wchar_t *const ns[] = {L"Global", L"Local"};
  DWORD err = ERROR_FILE_NOT_FOUND;
  for (int i = 0; i < 2; i++) {
    wchar_t ev[DESK_EVENT_CHARS];
    desk_event_name(ev, ns[i], name, kind);
    HANDLE h = OpenEventW(access, FALSE, ev);
    if (h)
      return h;
    if (err == ERROR_FILE_NOT_FOUND)
      err = GetLastError();
  }
  SetLastError(err);
  return NULL;
}

/* Create it; GetLastError() is ERROR_ALREADY_EXISTS when it was there. */
static HANDLE desk_create_event(const wchar_t *name, const wchar_t *kind,
                                BOOL manual_reset) {
  wchar_t ev[DESK_EVENT_CHARS];
  desk_event_name(ev, L"Global", name, kind);
  HANDLE h = CreateEventW(NULL, manual_reset, FALSE, ev);
  if (!h) { /* no SeCreateGlobalPrivilege */
    desk_event_name(ev, L"Local", name, kind);
    h = CreateEventW(NULL, manual_reset, FALSE, ev);
  }
  return h;
}

static BOOL WINAPI desk_ctrl(DWORD type) {
  const char *what;
  switch (type) {
  case CTRL_C_EVENT:
    what = "Ctrl-C";
    break;
  case CTRL_BREAK_EVENT:
    what = "Ctrl-Break";
    break;
  case CTRL_CLOSE_EVENT:
    what = "the console closing";
    break;
  case CTRL_LOGOFF_EVENT:
    what = "logoff";
    break;
  case CTRL_SHUTDOWN_EVENT:
    what = "shutdown";
    break;
  default:
    return FALSE;
  }
  svc_log("%s: stopping goliat-host", what);
  SetEvent(svc.stop);
  if (type != CTRL_C_EVENT && type != CTRL_BREAK_EVENT)
    /* the process is ended once this returns */
    WaitForSingleObject(svc.ended, svc_stop_timeout_ms());
  return TRUE;
}

/* The console the agent and its studies share (Ctrl-Break between them):
 * the one this process was started with (the logon task's, which nobody
 * reads, is hidden; a console it shares, started by hand, is left as it
 * is), or a hidden one of its own when it has none. */
static void desk_console(void) {
  DWORD list[2];
  DWORD n = GetConsoleProcessList(list, 2);
  if (n == 0 && AllocConsole())
    n = 1;
  if (n == 1) {
    HWND w = GetConsoleWindow();
    if (w)
      ShowWindow(w, SW_HIDE);
  }
  SetConsoleCtrlHandler(desk_ctrl, TRUE);
}

static LRESULT CALLBACK desk_window_proc(HWND w, UINT msg, WPARAM wp,
                                         LPARAM lp) {
  switch (msg) {
  case WM_QUERYENDSESSION:
    /* yes; and what Windows shows meanwhile, should the stop take long */
    ShutdownBlockReasonCreate(w, L"Stopping the GOLIAT agent and its study");
    return TRUE;
  case WM_ENDSESSION:
    if (wp) {
      svc_log("%s: stopping goliat-host",
              (lp & ENDSESSION_LOGOFF) ? "logoff" : "shutdown");
      SetEvent(svc.stop);
      WaitForSingleObject(svc.ended, svc_stop_timeout_ms());
    } else {
      ShutdownBlockReasonDestroy(w); /* the end was called off */
    }
    return 0;
  default:
    return DefWindowProcW(w, msg, wp, lp);
  }
}

static DWORD WINAPI desk_window_thread(LPVOID arg) {
  (void)arg;
  WNDCLASSW wc;
  memset(&wc, 0, sizeof wc);
  wc.lpfnWndProc = desk_window_proc;
  wc.hInstance = GetModuleHandleW(NULL);
  wc.lpszClassName = L"goliat-host-desktop";
  HWND w = NULL;
  if (RegisterClassW(&wc))
    w = CreateWindowExW(0, wc.lpszClassName, svc.name, WS_OVERLAPPED, 0, 0, 0,
                        0, NULL, NULL, wc.hInstance, NULL);
  if (!w) {
    svc_log("cannot create the window that hears of logoff and shutdown "
            "(error %lu): goliat-host would be ended then without a clean "
            "stop",
            (unsigned long)GetLastError());
    return 1;
  }
  MSG m;
  while (GetMessageW(&m, NULL, 0, 0) > 0) {
    TranslateMessage(&m);
    DispatchMessageW(&m);
  }
  return 0;
}

static VOID CALLBACK on_desk_reload(PVOID arg, BOOLEAN timed_out) {
  (void)arg;
  (void)timed_out;
  svc_log("reload requested: passed on to goliat-host");
  if (svc.child_reload)
    SetEvent(svc.child_reload);
}

/* A NAME for a service, a task, a log file and named events alike: 1 to 64
 * letters, digits, '-', '_' and '.', starting with a letter or digit. */
static int valid_name(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64 || !isalnum((unsigned char)s[0]))
    return 0;
  for (; *s; s++)
    if (!isalnum((unsigned char)*s) && !strchr("-_.", *s))
      return 0;
  return 1;
}

int plat_desktop_main(int argc, char **argv) {
  if (argc < 4) {
    fputs("usage: goliat-host --desktop NAME SCRIPT [ARG...]\n", stderr);
    return 2;
  }
  if (!valid_name(argv[2])) {
    fprintf(stderr,
            "goliat-host: --desktop: '%s' is not a NAME (1 to 64 letters, "
            "digits, '-', '_' and '.')\n",
            argv[2]);
    return 2;
  }
  svc.desktop = 1;
  svc.name = to_wide(argv[2]);
  svc.argv = argv + 3;
  svc.ended = CreateEventW(NULL, TRUE, FALSE, NULL);
  if (!svc.name || !svc.ended) {
    fputs("goliat-host: --desktop: out of resources\n", stderr);
    return 1;
  }
  HANDLE other = desk_open_event(svc.name, L"stop", SYNCHRONIZE);
  DWORD e = GetLastError();
  if (!other && e == ERROR_FILE_NOT_FOUND) {
    svc.stop = desk_create_event(svc.name, L"stop", TRUE);
    e = svc.stop ? GetLastError() : 0;
  }
  if (other || e == ERROR_ALREADY_EXISTS || e == ERROR_ACCESS_DENIED) {
    if (other)
      CloseHandle(other);
    fprintf(stderr,
            "goliat-host: the desktop agent %s already runs (goliat-host "
            "--stop %s stops it)\n",
            argv[2], argv[2]);
    return 1;
  }
  if (!svc.stop) {
    fprintf(stderr,
            "goliat-host: --desktop: cannot create its stop event: %s\n",
            uv_strerror(uv_translate_sys_error((int)GetLastError())));
    return 1;
  }
  svc.reload = desk_create_event(svc.name, L"reload", FALSE);
  HANDLE desk_reload_wait;
  if (svc.reload)
    RegisterWaitForSingleObject(&desk_reload_wait, svc.reload, on_desk_reload,
                                NULL, INFINITE, WT_EXECUTEDEFAULT);
  /* told of a logoff before the processes of the default level (0x280) */
  SetProcessShutdownParameters(0x380, 0);
  HANDLE t = CreateThread(NULL, 0, desk_window_thread, NULL, 0, NULL);
  if (t)
    CloseHandle(t);
  svc_run();
  return 0;
}

/* ---- --reload, --stop, --install, --uninstall ---- */

/* A line of what --install, --uninstall and --stop did, on stdout. */
static void said(const char *fmt, ...) HOST_PRINTF(1, 2);

static void said(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

/* Windows' own words for error e (in UTF-8), and its number. */
static const char *win_error(DWORD e) {
  static char buf[512];
  wchar_t w[256];
  DWORD n =
      FormatMessageW(FORMAT_MESSAGE_FROM_SYSTEM | FORMAT_MESSAGE_IGNORE_INSERTS,
                     NULL, e, 0, w, 256, NULL);
  while (n > 0 && (w[n - 1] == L'\r' || w[n - 1] == L'\n' || w[n - 1] == L' ' ||
                   w[n - 1] == L'.'))
    n--;
  w[n] = L'\0';
  char *text = n > 0 ? to_utf8(w) : NULL;
  snprintf(buf, sizeof buf, "%s (error %lu)",
           text ? text : uv_strerror(uv_translate_sys_error((int)e)),
           (unsigned long)e);
  free(text);
  return buf;
}

/* UTF-8 on the console, "\n" as it is, as after plat_init. */
static void command_output(void) {
  SetConsoleOutputCP(CP_UTF8);
  _setmode(_fileno(stdout), _O_BINARY);
  _setmode(_fileno(stderr), _O_BINARY);
}

static int service_is_ours(SC_HANDLE s, const char *uname);

/* goliat-host --reload NAME (--service-reload NAME): only a service that
 * runs goliat-host.exe --service NAME is asked. */
int plat_service_reload(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: goliat-host %s NAME\n", argv[1]);
    return 2;
  }
  command_output();
  wchar_t *name = to_wide(argv[2]);
  SC_HANDLE scm = name ? OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT) : NULL;
  SC_HANDLE service =
      scm ? OpenServiceW(scm, name,
                         SERVICE_PAUSE_CONTINUE | SERVICE_QUERY_CONFIG)
          : NULL;
  DWORD e = service ? 0 : GetLastError();
  int foreign = service && !service_is_ours(service, argv[2]);
  SERVICE_STATUS st;
  BOOL ok = service && !foreign &&
            ControlService(service, SERVICE_CONTROL_PARAMCHANGE, &st);
  if (service && !foreign && !ok)
    e = GetLastError();
  if (service)
    CloseServiceHandle(service);
  if (scm)
    CloseServiceHandle(scm);
  if (ok) {
    free(name);
    printf("goliat-host: asked the service %s to reload; its log says "
           "whether the new script was taken up\n",
           argv[2]);
    return 0;
  }
  if (e == ERROR_SERVICE_DOES_NOT_EXIST && name) {
    HANDLE ev = desk_open_event(name, L"reload", EVENT_MODIFY_STATE);
    if (ev) {
      SetEvent(ev);
      CloseHandle(ev);
      free(name);
      printf("goliat-host: asked the desktop agent %s to reload; its log "
             "says whether the new script was taken up\n",
             argv[2]);
      return 0;
    }
    if (GetLastError() == ERROR_ACCESS_DENIED)
      e = ERROR_ACCESS_DENIED;
  }
  free(name);
  const char *why;
  switch (e) {
  case ERROR_SERVICE_DOES_NOT_EXIST:
    why = "no service of that name, and no desktop agent of that name runs";
    break;
  case ERROR_SERVICE_NOT_ACTIVE:
    why = "the service is not running";
    break;
  case ERROR_ACCESS_DENIED:
    why = "access denied (run it from an elevated prompt)";
    break;
  case ERROR_INVALID_SERVICE_CONTROL:
    why = "the service does not take reloads (is it goliat-host --service?)";
    break;
  default:
    why = uv_strerror(uv_translate_sys_error((int)e));
  }
  if (foreign)
    why = "it is not goliat-host's (said above)";
  fprintf(stderr, "goliat-host: cannot reload %s: %s\n", argv[2], why);
  return 1;
}

/* Whether the command line cmd runs goliat-host.exe --service NAME (the
 * program's file name and NAME compared as Windows compares them, without
 * case). */
static int runs_service(const wchar_t *cmd, const char *uname) {
  wchar_t *name = to_wide(uname);
  int n = 0;
  wchar_t **a = name && *cmd ? CommandLineToArgvW(cmd, &n) : NULL;
  int ours = 0;
  if (a && n >= 3) {
    const wchar_t *file = a[0];
    for (const wchar_t *c = a[0]; *c; c++)
      if (*c == L'\\' || *c == L'/')
        file = c + 1;
    ours = _wcsicmp(file, L"goliat-host.exe") == 0 &&
           wcscmp(a[1], L"--service") == 0 && _wcsicmp(a[2], name) == 0;
  }
  if (a)
    LocalFree(a);
  free(name);
  return ours;
}

/* Whether the service runs goliat-host.exe --service NAME (its command
 * line says so); says why not otherwise. */
static int service_is_ours(SC_HANDLE s, const char *uname) {
  DWORD need = 0;
  QueryServiceConfigW(s, NULL, 0, &need);
  QUERY_SERVICE_CONFIGW *qc = need ? malloc(need) : NULL;
  int ours = 0;
  if (qc && QueryServiceConfigW(s, qc, need, &need)) {
    const wchar_t *bin = qc->lpBinaryPathName ? qc->lpBinaryPathName : L"";
    ours = runs_service(bin, uname);
    if (!ours) {
      char *b = to_utf8(bin);
      said("the service %s is not goliat-host's (it runs %s): left alone",
           uname, b ? b : "?");
      free(b);
    }
  } else {
    said("cannot read the configuration of the service %s: %s", uname,
         win_error(GetLastError()));
  }
  free(qc);
  return ours;
}

static DWORD service_state(SC_HANDLE s, DWORD *pid) {
  SERVICE_STATUS_PROCESS st;
  DWORD need;
  if (!QueryServiceStatusEx(s, SC_STATUS_PROCESS_INFO, (LPBYTE)&st, sizeof st,
                            &need))
    return 0;
  if (pid)
    *pid = st.dwProcessId;
  return st.dwCurrentState;
}

/* Wait (bounded) until the service is in state want. */
static int service_wait(SC_HANDLE s, DWORD want, DWORD ms, DWORD *pid) {
  for (DWORD waited = 0;; waited += 200) {
    DWORD state = service_state(s, pid);
    if (state == want)
      return 1;
    if (state == 0 || waited >= ms)
      return 0;
    Sleep(200);
  }
}

/* Stop the service as sc stop does, and wait until it has stopped (its
 * agent stops its study and reports first). 1: stopped, 0: was not
 * running, -1: failed (said why). */
static int service_stop(SC_HANDLE s, const char *uname) {
  if (service_state(s, NULL) == SERVICE_STOPPED)
    return 0;
  SERVICE_STATUS st;
  if (!ControlService(s, SERVICE_CONTROL_STOP, &st)) {
    DWORD e = GetLastError();
    if (e == ERROR_SERVICE_NOT_ACTIVE)
      return 0;
    if (e != ERROR_SERVICE_CANNOT_ACCEPT_CTRL) { /* (already stopping) */
      said("cannot stop the service %s: %s", uname, win_error(e));
      return -1;
    }
  }
  DWORD limit = svc_stop_timeout_ms() + 15000;
  if (!service_wait(s, SERVICE_STOPPED, limit, NULL)) {
    said("the service %s has not stopped within %lu s", uname,
         (unsigned long)(limit / 1000));
    return -1;
  }
  said("stopped the service %s", uname);
  return 1;
}

/* Stop the desktop supervisor name, and wait until it is gone (it has
 * stopped its agent). 1: stopped, 0: none runs, -1: failed (said why). */
static int desktop_stop(const wchar_t *name, const char *uname) {
  HANDLE ev = desk_open_event(name, L"stop", EVENT_MODIFY_STATE);
  if (!ev) {
    DWORD e = GetLastError();
    if (e == ERROR_FILE_NOT_FOUND)
      return 0;
    said("cannot stop the desktop agent %s: %s%s", uname, win_error(e),
         e == ERROR_ACCESS_DENIED ? ": run it from an elevated prompt" : "");
    return -1;
  }
  SetEvent(ev);
  CloseHandle(ev);
  DWORD limit = svc_stop_timeout_ms() + 15000;
  for (DWORD waited = 0; waited < limit; waited += 200) {
    Sleep(200);
    /* the event lasts as long as the supervisor holds it */
    HANDLE h = desk_open_event(name, L"stop", SYNCHRONIZE);
    if (!h) {
      said("stopped the desktop agent %s", uname);
      return 1;
    }
    CloseHandle(h);
  }
  said("the desktop agent %s has not stopped within %lu s", uname,
       (unsigned long)(limit / 1000));
  return -1;
}

/* goliat-host --stop NAME */
int plat_stop(int argc, char **argv) {
  if (argc != 3) {
    fputs("usage: goliat-host --stop NAME\n", stderr);
    return 2;
  }
  command_output();
  wchar_t *name = to_wide(argv[2]);
  if (!name)
    return 2;
  SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
  SC_HANDLE s = scm ? OpenServiceW(scm, name,
                                   SERVICE_STOP | SERVICE_QUERY_STATUS |
                                       SERVICE_QUERY_CONFIG)
                    : NULL;
  DWORD e = s ? 0 : GetLastError();
  int rc;
  if (s) {
    rc = service_is_ours(s, argv[2]) ? service_stop(s, argv[2]) : -1;
    if (rc == 0)
      said("the service %s is not running", argv[2]);
    CloseServiceHandle(s);
  } else if (e == ERROR_ACCESS_DENIED) {
    said("cannot stop the service %s: %s: run it from an elevated prompt",
         argv[2], win_error(e));
    rc = -1;
  } else {
    rc = desktop_stop(name, argv[2]);
    if (rc == 0) {
      fprintf(stderr,
              "goliat-host: nothing to stop: no service named %s, and no "
              "desktop agent of that name runs\n",
              argv[2]);
      rc = -1;
    }
  }
  if (scm)
    CloseServiceHandle(scm);
  free(name);
  return rc < 0 ? 1 : 0;
}

/* Whether this process may install: an administrator's elevated token
 * (CheckTokenMembership sees the Administrators group only then).
 * GOLIAT_TEST_NOT_ELEVATED=1 says no, for the specs. */
static int elevated(void) {
  char v[8];
  DWORD n = GetEnvironmentVariableA("GOLIAT_TEST_NOT_ELEVATED", v, sizeof v);
  if (n > 0 && n < sizeof v && strcmp(v, "1") == 0)
    return 0;
  BYTE sid[SECURITY_MAX_SID_SIZE];
  DWORD size = sizeof sid;
  BOOL member = FALSE;
  if (!CreateWellKnownSid(WinBuiltinAdministratorsSid, NULL, sid, &size) ||
      !CheckTokenMembership(NULL, sid, &member))
    return 0;
  return member != FALSE;
}

/* wcs with more appended, malloc'd; frees nothing. */
static wchar_t *wcs_cat(const wchar_t *a, const wchar_t *b, const wchar_t *c) {
  size_t la = wcslen(a), lb = wcslen(b), lc = c ? wcslen(c) : 0;
  wchar_t *w = malloc((la + lb + lc + 1) * sizeof *w);
  if (!w)
    return NULL;
  memcpy(w, a, la * sizeof *w);
  memcpy(w + la, b, lb * sizeof *w);
  if (c)
    memcpy(w + la + lb, c, lc * sizeof *w);
  w[la + lb + lc] = L'\0';
  return w;
}

/* A program of Windows' own (System32), malloc'd: never one on PATH. */
static wchar_t *system_program(const wchar_t *exe) {
  wchar_t dir[MAX_PATH];
  UINT n = GetSystemDirectoryW(dir, MAX_PATH);
  if (n == 0 || n >= MAX_PATH)
    return NULL;
  return wcs_cat(dir, L"\\", exe);
}

/* Run program with the arguments args (UTF-8, NULL-terminated, args[0] the
 * program's name), its stdout and stderr in *out (malloc'd, as it wrote
 * them); returns its exit code, or -1 when it cannot start (*out says
 * why). */
static long run_program(const wchar_t *program, char *const *args, char **out) {
  *out = NULL;
  DWORD err;
  wchar_t *cmd = make_cmdline(args, &err);
  SECURITY_ATTRIBUTES sa = {sizeof sa, NULL, TRUE};
  HANDLE rd = NULL, wr = NULL;
  if (!cmd || !CreatePipe(&rd, &wr, &sa, 0)) {
    free(cmd);
    *out = host_strdup(win_error(cmd ? GetLastError() : err));
    return -1;
  }
  SetHandleInformation(rd, HANDLE_FLAG_INHERIT, 0);
  HANDLE in = CreateFileW(L"NUL", GENERIC_READ, FILE_SHARE_READ, &sa,
                          OPEN_EXISTING, 0, NULL);
  STARTUPINFOW si;
  memset(&si, 0, sizeof si);
  si.cb = sizeof si;
  si.dwFlags = STARTF_USESTDHANDLES;
  si.hStdInput = in;
  si.hStdOutput = wr;
  si.hStdError = wr;
  PROCESS_INFORMATION pi;
  BOOL ok = CreateProcessW(program, cmd, NULL, NULL, TRUE, CREATE_NO_WINDOW,
                           NULL, NULL, &si, &pi);
  err = GetLastError();
  free(cmd);
  CloseHandle(wr);
  if (in != INVALID_HANDLE_VALUE)
    CloseHandle(in);
  if (!ok) {
    CloseHandle(rd);
    *out = host_strdup(win_error(err));
    return -1;
  }
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  DWORD n;
  char chunk[4096];
  while (ReadFile(rd, chunk, sizeof chunk, &n, NULL) && n > 0) {
    if (buf && len + n + 1 > cap) {
      char *bigger = realloc(buf, cap = 2 * (len + n + 1));
      if (!bigger)
        free(buf);
      buf = bigger;
    }
    if (buf) {
      memcpy(buf + len, chunk, n);
      len += n;
    }
  }
  CloseHandle(rd);
  if (buf) {
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r' ||
                       buf[len - 1] == ' '))
      len--;
    buf[len] = '\0';
  }
  *out = buf;
  WaitForSingleObject(pi.hProcess, INFINITE);
  DWORD code = 1;
  GetExitCodeProcess(pi.hProcess, &code);
  CloseHandle(pi.hProcess);
  CloseHandle(pi.hThread);
  return (long)code;
}

/* schtasks.exe with the arguments after its name (UTF-8); its exit code,
 * said with its output when it is not 0. */
static long schtasks(const char *what, char **args) {
  wchar_t *program = system_program(L"schtasks.exe");
  char *out = NULL;
  long code = program ? run_program(program, args, &out) : -1;
  if (code != 0)
    said("%s: schtasks.exe %s: %s", what, code < 0 ? "cannot start" : "failed",
         out && *out ? out : "(no output)");
  free(out);
  free(program);
  return code;
}

/* Where Task Scheduler keeps the task name's definition (an administrator
 * may read it): whether the task exists. */
static int task_exists(const wchar_t *name) {
  wchar_t *tasks = system_program(L"Tasks\\");
  wchar_t *file = tasks ? wcs_cat(tasks, name, NULL) : NULL;
  int exists = file && is_file(file);
  free(tasks);
  free(file);
  return exists;
}

/* Whether the task name is goliat-host's: its definition, as Task
 * Scheduler keeps it (UTF-16, or UTF-8), has the author --install desktop
 * writes (task_xml); says why not otherwise. */
static int task_is_ours(const wchar_t *name, const char *uname) {
  wchar_t *tasks = system_program(L"Tasks\\");
  wchar_t *file = tasks ? wcs_cat(tasks, name, NULL) : NULL;
  HANDLE h =
      file ? CreateFileW(file, GENERIC_READ,
                         FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                         NULL, OPEN_EXISTING, FILE_ATTRIBUTE_NORMAL, NULL)
           : INVALID_HANDLE_VALUE;
  DWORD e = h == INVALID_HANDLE_VALUE ? GetLastError() : 0;
  LARGE_INTEGER size = {0};
  char *raw = NULL;
  DWORD got = 0;
  if (!e && (!GetFileSizeEx(h, &size) || size.QuadPart > (1 << 20)))
    e = size.QuadPart > (1 << 20) ? ERROR_FILE_TOO_LARGE : GetLastError();
  if (!e && !(raw = calloc(1, (size_t)size.QuadPart + 4)))
    e = ERROR_OUTOFMEMORY;
  if (!e && !ReadFile(h, raw, (DWORD)size.QuadPart, &got, NULL))
    e = GetLastError();
  if (h != INVALID_HANDLE_VALUE)
    CloseHandle(h);
  wchar_t *text = NULL;
  int ours = 0;
  if (!e) {
    const unsigned char *b = (const unsigned char *)raw;
    if (got >= 2 && b[0] == 0xFF && b[1] == 0xFE)
      text = wcs_cat((const wchar_t *)(raw + 2), L"", NULL);
    else if (got >= 2 && b[1] == 0) /* UTF-16 without its mark */
      text = wcs_cat((const wchar_t *)raw, L"", NULL);
    else
      text = to_wide(raw);
    ours = text && wcsstr(text, L"<Author>goliat-host --install desktop"
                                L"</Author>") != NULL;
    if (!ours)
      said("the logon task %s is not goliat-host's (its author is not "
           "goliat-host --install desktop): left alone",
           uname);
  } else {
    said("cannot read the definition of the logon task %s: %s: left alone",
         uname, win_error(e));
  }
  free(text);
  free(raw);
  free(tasks);
  free(file);
  return ours;
}

/* Where goliat-host.exe is, its folder and scripts\agent.lua in it
 * (UTF-16 and UTF-8), malloc'd. */
typedef struct {
  wchar_t *exe, *dir, *script, *name;
  char *exe8, *dir8, *script8, *name8;
} agent_paths;

static void agent_paths_free(agent_paths *p) {
  free(p->exe);
  free(p->dir);
  free(p->script);
  free(p->name);
  free(p->exe8);
  free(p->dir8);
  free(p->script8);
  free(p->name8);
}

static int agent_paths_find(agent_paths *p, const char *name) {
  memset(p, 0, sizeof *p);
  p->exe = exe_path();
  wchar_t *slash = p->exe ? wcsrchr(p->exe, L'\\') : NULL;
  if (!slash)
    return 0;
  p->dir = malloc((size_t)(slash - p->exe + 1) * sizeof *p->dir);
  if (!p->dir)
    return 0;
  memcpy(p->dir, p->exe, (size_t)(slash - p->exe) * sizeof *p->dir);
  p->dir[slash - p->exe] = L'\0';
  p->script = wcs_cat(p->dir, L"\\scripts\\agent.lua", NULL);
  p->name = to_wide(name);
  p->exe8 = to_utf8(p->exe);
  p->dir8 = to_utf8(p->dir);
  p->script8 = p->script ? to_utf8(p->script) : NULL;
  p->name8 = host_strdup(name);
  return p->script && p->name && p->exe8 && p->dir8 && p->script8 && p->name8;
}

/* The user account as DOMAIN\name (UTF-16, malloc'd): user, or the one
 * running this when NULL; NULL when there is no such user (said why). */
static wchar_t *account(const char *user) {
  wchar_t me[257];
  DWORD me_len = 257;
  wchar_t *w = user ? to_wide(user) : NULL;
  if (!user && GetUserNameW(me, &me_len))
    w = wcs_cat(me, L"", NULL);
  BYTE sid[SECURITY_MAX_SID_SIZE];
  DWORD sid_size = sizeof sid;
  wchar_t dom[256], nm[257];
  DWORD dom_len = 256, nm_len = 257;
  SID_NAME_USE use;
  BOOL ok =
      w && LookupAccountNameW(NULL, w, sid, &sid_size, dom, &dom_len, &use);
  DWORD e = GetLastError();
  free(w);
  dom_len = 256;
  if (ok && use == SidTypeUser &&
      LookupAccountSidW(NULL, sid, nm, &nm_len, dom, &dom_len, &use))
    return wcs_cat(dom, L"\\", nm);
  if (user)
    fprintf(stderr,
            "goliat-host: --user %s: no such user account (%s); give a "
            "local user or DOMAIN\\user. Nothing was changed.\n",
            user, ok ? "not a user" : win_error(e));
  else
    fprintf(stderr, "goliat-host: cannot tell who you are: %s\n", win_error(e));
  return NULL;
}

/* ---- a growing UTF-8 text (the task's XML) ---- */

typedef struct {
  char *p;
  size_t len, cap;
  int failed;
} xml_text;

static void text_add(xml_text *t, const char *s) {
  size_t n = strlen(s);
  if (t->failed)
    return;
  if (t->len + n + 1 > t->cap) {
    size_t cap = 2 * (t->len + n + 1);
    char *p = realloc(t->p, cap);
    if (!p) {
      t->failed = 1;
      return;
    }
    t->p = p;
    t->cap = cap;
  }
  memcpy(t->p + t->len, s, n + 1);
  t->len += n;
}

/* s with &, <, >, " and ' written as XML entities */
static void text_xml(xml_text *t, const char *s) {
  char one[2] = {0, 0};
  for (; *s; s++) {
    switch (*s) {
    case '&':
      text_add(t, "&amp;");
      break;
    case '<':
      text_add(t, "&lt;");
      break;
    case '>':
      text_add(t, "&gt;");
      break;
    case '"':
      text_add(t, "&quot;");
      break;
    case '\'':
      text_add(t, "&apos;");
      break;
    default:
      one[0] = *s;
      text_add(t, one);
    }
  }
}

/* The logon task's definition (Task Scheduler schema 1.2), UTF-8: at each
 * logon of user, in that user's session, only while logged on
 * (InteractiveToken: no password stored), with the user's highest rights,
 * at normal priority (Priority 4; a task's default, 7, is below normal),
 * for as long as it runs (no 72-hour limit), one at a time, whatever the
 * power source. */
static char *task_xml(const char *user, const agent_paths *p) {
  char *args_v[] = {"--desktop", p->name8, p->script8, NULL};
  DWORD err;
  wchar_t *argsw = make_cmdline(args_v, &err);
  char *args = argsw ? to_utf8(argsw) : NULL;
  free(argsw);
  if (!args)
    return NULL;
  xml_text t = {0};
  text_add(&t, "<?xml version=\"1.0\" encoding=\"UTF-16\"?>\r\n"
               "<Task version=\"1.2\" xmlns=\"http://schemas.microsoft.com/"
               "windows/2004/02/mit/task\">\r\n"
               "  <RegistrationInfo>\r\n"
               "    <Author>goliat-host --install desktop</Author>\r\n"
               "    <Description>The GOLIAT agent in the desktop of ");
  text_xml(&t, user);
  text_add(&t, " from logon to logoff (goliat-host --desktop; its log: ");
  text_xml(&t, p->name8);
  text_add(&t, ".log next to goliat-host.exe). Remove it with goliat-host "
               "--uninstall.</Description>\r\n"
               "  </RegistrationInfo>\r\n"
               "  <Triggers>\r\n"
               "    <LogonTrigger>\r\n"
               "      <Enabled>true</Enabled>\r\n"
               "      <UserId>");
  text_xml(&t, user);
  text_add(&t, "</UserId>\r\n"
               "    </LogonTrigger>\r\n"
               "  </Triggers>\r\n"
               "  <Principals>\r\n"
               "    <Principal id=\"Author\">\r\n"
               "      <UserId>");
  text_xml(&t, user);
  text_add(&t, "</UserId>\r\n"
               "      <LogonType>InteractiveToken</LogonType>\r\n"
               "      <RunLevel>HighestAvailable</RunLevel>\r\n"
               "    </Principal>\r\n"
               "  </Principals>\r\n"
               "  <Settings>\r\n"
               "    <MultipleInstancesPolicy>IgnoreNew</"
               "MultipleInstancesPolicy>\r\n"
               "    <DisallowStartIfOnBatteries>false</"
               "DisallowStartIfOnBatteries>\r\n"
               "    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>\r\n"
               "    <AllowHardTerminate>true</AllowHardTerminate>\r\n"
               "    <StartWhenAvailable>false</StartWhenAvailable>\r\n"
               "    <RunOnlyIfNetworkAvailable>false</"
               "RunOnlyIfNetworkAvailable>\r\n"
               "    <AllowStartOnDemand>true</AllowStartOnDemand>\r\n"
               "    <Enabled>true</Enabled>\r\n"
               "    <Hidden>false</Hidden>\r\n"
               "    <RunOnlyIfIdle>false</RunOnlyIfIdle>\r\n"
               "    <WakeToRun>false</WakeToRun>\r\n"
               "    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>\r\n"
               "    <Priority>4</Priority>\r\n"
               "    <RestartOnFailure>\r\n"
               "      <Interval>PT1M</Interval>\r\n"
               "      <Count>3</Count>\r\n"
               "    </RestartOnFailure>\r\n"
               "  </Settings>\r\n"
               "  <Actions Context=\"Author\">\r\n"
               "    <Exec>\r\n"
               "      <Command>");
  if (strchr(p->exe8, ' ')) { /* quoted, as Task Scheduler's own window does */
    text_add(&t, "&quot;");
    text_xml(&t, p->exe8);
    text_add(&t, "&quot;");
  } else {
    text_xml(&t, p->exe8);
  }
  text_add(&t, "</Command>\r\n"
               "      <Arguments>");
  text_xml(&t, args);
  text_add(&t, "</Arguments>\r\n"
               "      <WorkingDirectory>");
  text_xml(&t, p->dir8);
  text_add(&t, "</WorkingDirectory>\r\n"
               "    </Exec>\r\n"
               "  </Actions>\r\n"
               "</Task>\r\n");
  free(args);
  if (t.failed) {
    free(t.p);
    return NULL;
  }
  return t.p;
}

/* Write utf8 to path as UTF-16 with its byte order mark (as schtasks
 * /XML reads it); 0 or a Windows error. */
static DWORD write_utf16(const wchar_t *path, const char *utf8) {
  wchar_t *w = to_wide(utf8);
  if (!w)
    return ERROR_NO_UNICODE_TRANSLATION;
  HANDLE h = CreateFileW(path, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS,
                         FILE_ATTRIBUTE_NORMAL, NULL);
  DWORD e = 0, n;
  static const unsigned char bom[2] = {0xFF, 0xFE};
  DWORD size = (DWORD)(wcslen(w) * sizeof *w);
  if (h == INVALID_HANDLE_VALUE)
    e = GetLastError();
  else if (!WriteFile(h, bom, 2, &n, NULL) || !WriteFile(h, w, size, &n, NULL))
    e = GetLastError();
  if (h != INVALID_HANDLE_VALUE)
    CloseHandle(h);
  free(w);
  return e;
}

/* Remove the service p->name, stopping it first, if it is goliat-host's.
 * 1: removed, 0: none, 2: not goliat-host's (said so), -1: failed (said
 * why). */
static int service_remove(const agent_paths *p) {
  SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_CONNECT);
  if (!scm) {
    said("cannot open the service manager: %s", win_error(GetLastError()));
    return -1;
  }
  SC_HANDLE s = OpenServiceW(scm, p->name,
                             SERVICE_STOP | SERVICE_QUERY_STATUS |
                                 SERVICE_QUERY_CONFIG | DELETE);
  DWORD e = s ? 0 : GetLastError();
  int rc = 0;
  if (!s) {
    if (e != ERROR_SERVICE_DOES_NOT_EXIST) {
      said("cannot open the service %s: %s", p->name8, win_error(e));
      rc = -1;
    }
  } else if (!service_is_ours(s, p->name8)) {
    rc = 2;
  } else {
    rc = service_stop(s, p->name8) < 0 ? -1 : 1;
    if (rc == 1 && !DeleteService(s) &&
        (e = GetLastError()) != ERROR_SERVICE_MARKED_FOR_DELETE) {
      said("cannot remove the service %s: %s", p->name8, win_error(e));
      rc = -1;
    }
    if (rc == 1)
      said("removed the service %s", p->name8);
  }
  if (s)
    CloseServiceHandle(s);
  CloseServiceHandle(scm);
  return rc;
}

/* The task's definition as --install desktop keeps it, next to the exe. */
static wchar_t *task_xml_path(const agent_paths *p) {
  wchar_t *base = wcs_cat(p->dir, L"\\", p->name);
  wchar_t *path = base ? wcs_cat(base, L"-task.xml", NULL) : NULL;
  free(base);
  return path;
}

/* Stop the desktop agent p->name and remove its logon task. 1: something
 * was, 0: nothing was there, -1: failed (said why), 2: a logon task of
 * that name is not goliat-host's: nothing done (said so). */
static int desktop_remove(const agent_paths *p) {
  int exists = task_exists(p->name);
  if (exists && !task_is_ours(p->name, p->name8))
    return 2;
  int rc = desktop_stop(p->name, p->name8);
  if (rc < 0)
    return -1;
  if (exists) {
    char *args[] = {"schtasks", "/Delete", "/TN", p->name8, "/F", NULL};
    if (schtasks("cannot remove the logon task", args) != 0)
      return -1;
    said("removed the logon task %s", p->name8);
    rc = 1;
  }
  wchar_t *xml = task_xml_path(p);
  if (xml && is_file(xml) && DeleteFileW(xml)) {
    char *x = to_utf8(xml);
    said("removed %s", x ? x : "the task's definition");
    free(x);
  }
  free(xml);
  return rc;
}

static int install_service(const agent_paths *p) {
  int d = desktop_remove(p); /* one mode at a time */
  if (d == 2)
    said("choose another name: goliat-host --install service --name NAME");
  if (d < 0 || d == 2)
    return 1;
  char *args[] = {p->exe8, "--service", p->name8, p->script8, NULL};
  DWORD err;
  wchar_t *bin = make_cmdline(args, &err);
  char *bin8 = bin ? to_utf8(bin) : NULL;
  wchar_t *display = wcs_cat(L"GOLIAT agent (", p->name, L")");
  SC_HANDLE scm = OpenSCManagerW(NULL, NULL, SC_MANAGER_ALL_ACCESS);
  SC_HANDLE s = NULL;
  int rc = 1;
  if (!bin8 || !display) {
    said("out of memory");
    goto done;
  }
  if (!scm) {
    said("cannot open the service manager: %s", win_error(GetLastError()));
    goto done;
  }
  s = OpenServiceW(scm, p->name, SERVICE_ALL_ACCESS);
  if (s) {
    if (!service_is_ours(s, p->name8)) {
      said("choose another name: goliat-host --install service --name NAME");
      goto done;
    }
    /* the account (obj=) and the Environment value stay as they were */
    if (!ChangeServiceConfigW(s, SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START,
                              SERVICE_ERROR_NORMAL, bin, NULL, NULL, NULL, NULL,
                              NULL, display)) {
      said("cannot update the service %s: %s", p->name8,
           win_error(GetLastError()));
      goto done;
    }
    said("the service %s was already installed: updated it: %s", p->name8,
         bin8);
  } else {
    DWORD e = GetLastError();
    if (e == ERROR_SERVICE_DOES_NOT_EXIST)
      s = CreateServiceW(scm, p->name, display, SERVICE_ALL_ACCESS,
                         SERVICE_WIN32_OWN_PROCESS, SERVICE_AUTO_START,
                         SERVICE_ERROR_NORMAL, bin, NULL, NULL, NULL, NULL,
                         NULL);
    if (!s) {
      e = e == ERROR_SERVICE_DOES_NOT_EXIST ? GetLastError() : e;
      said("cannot install the service %s: %s%s", p->name8, win_error(e),
           e == ERROR_SERVICE_MARKED_FOR_DELETE
               ? ": Windows is still removing it (close the Services window "
                 "and try again)"
               : "");
      goto done;
    }
    said("installed the service %s (LocalSystem): %s", p->name8, bin8);
  }
  wchar_t *about = wcs_cat(L"The GOLIAT worker agent (goliat-host --service): "
                           L"takes studies from the GOLIAT dashboard and runs "
                           L"them. Its log: ",
                           p->name,
                           L".log next to goliat-host.exe. Installed by "
                           L"goliat-host --install service.");
  SERVICE_DESCRIPTIONW desc = {about};
  if (about)
    ChangeServiceConfig2W(s, SERVICE_CONFIG_DESCRIPTION, &desc);
  free(about);
  SERVICE_DELAYED_AUTO_START_INFO delayed = {TRUE};
  if (ChangeServiceConfig2W(s, SERVICE_CONFIG_DELAYED_AUTO_START_INFO,
                            &delayed))
    said("start: automatic at boot, delayed until the network is up "
         "(delayed-auto)");
  else
    said("start: automatic at boot (Windows refused the delayed start: %s)",
         win_error(GetLastError()));
  SC_ACTION actions[3] = {{SC_ACTION_RESTART, 10000},
                          {SC_ACTION_RESTART, 10000},
                          {SC_ACTION_RESTART, 60000}};
  SERVICE_FAILURE_ACTIONSW failure = {86400, NULL, NULL, 3, actions};
  if (ChangeServiceConfig2W(s, SERVICE_CONFIG_FAILURE_ACTIONS, &failure))
    said("recovery: should the service process die, Windows starts it again "
         "after 10 s, 10 s, then 60 s (the count resets after a day)");
  else
    said("recovery: not set: %s", win_error(GetLastError()));
  DWORD pid = 0;
  if (service_state(s, &pid) == SERVICE_RUNNING) {
    said("the service %s already runs (pid %lu): left running; the new "
         "command line applies from its next start (an edited agent.lua or "
         "settings file: goliat-host --reload %s)",
         p->name8, (unsigned long)pid, p->name8);
    rc = 0;
    goto done;
  }
  if (!StartServiceW(s, 0, NULL) &&
      GetLastError() != ERROR_SERVICE_ALREADY_RUNNING) {
    said("cannot start the service %s: %s", p->name8,
         win_error(GetLastError()));
    goto done;
  }
  if (!service_wait(s, SERVICE_RUNNING, 30000, &pid)) {
    said("started the service %s, but it is not running 30 s later: see its "
         "log, %s\\%s.log",
         p->name8, p->dir8, p->name8);
    goto done;
  }
  said("started the service %s (pid %lu); its log: %s\\%s.log", p->name8,
       (unsigned long)pid, p->dir8, p->name8);
  rc = 0;
done:
  if (s)
    CloseServiceHandle(s);
  if (scm)
    CloseServiceHandle(scm);
  free(bin);
  free(bin8);
  free(display);
  return rc;
}

#define WINLOGON_KEY                                                           \
  L"SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon"

static int winlogon_value(const wchar_t *value, wchar_t *buf, DWORD chars) {
  DWORD size = chars * sizeof *buf;
  return RegGetValueW(HKEY_LOCAL_MACHINE, WINLOGON_KEY, value, RRF_RT_REG_SZ,
                      NULL, buf, &size) == ERROR_SUCCESS;
}

/* Whether Windows logs user on by itself after a reboot (autologon, as
 * Sysinternals Autologon or the Winlogon values set it); said, read
 * only. */
static void autologon_note(const wchar_t *user) {
  wchar_t on[8], name[257], domain[256];
  const wchar_t *slash = wcschr(user, L'\\');
  const wchar_t *bare = slash ? slash + 1 : user;
  char *u = to_utf8(user);
  if (winlogon_value(L"AutoAdminLogon", on, 8) && wcscmp(on, L"1") == 0 &&
      winlogon_value(L"DefaultUserName", name, 257)) {
    if (!winlogon_value(L"DefaultDomainName", domain, 256))
      domain[0] = L'\0';
    char *n = to_utf8(name), *d = to_utf8(domain);
    if (_wcsicmp(name, bare) == 0)
      said("autologon: on for %s%s%s: after a reboot (Windows Update) the "
           "agent starts with nobody logging on",
           d && *d ? d : "", d && *d ? "\\" : "", n ? n : "?");
    else
      said("autologon: on, but for %s%s%s, not %s: after a reboot the agent "
           "waits until %s logs on (README.md, \"Autologon\")",
           d && *d ? d : "", d && *d ? "\\" : "", n ? n : "?", u ? u : "?",
           u ? u : "?");
    free(n);
    free(d);
  } else {
    said("autologon: off: after a reboot (Windows Update) the agent waits "
         "until %s logs on; to have it start by itself, set up autologon "
         "for %s (README.md, \"Autologon\": Sysinternals Autologon keeps "
         "the password encrypted)",
         u ? u : "?", u ? u : "?");
  }
  free(u);
}

static int install_desktop(const agent_paths *p, const char *user_opt) {
  wchar_t *user = account(user_opt);
  wchar_t *me = user_opt ? account(NULL) : NULL;
  char *user8 = user ? to_utf8(user) : NULL;
  wchar_t *xml_path = task_xml_path(p);
  char *xml_path8 = xml_path ? to_utf8(xml_path) : NULL;
  char *xml = user8 ? task_xml(user8, p) : NULL;
  int rc = 1;
  if (!user)
    goto done; /* said why; nothing changed */
  if (!xml || !xml_path8) {
    said("out of memory");
    goto done;
  }
  int existed = task_exists(p->name);
  if (existed && !task_is_ours(p->name, p->name8)) {
    said("choose another name: goliat-host --install desktop --name NAME");
    goto done;
  }
  DWORD e = write_utf16(xml_path, xml);
  if (e) {
    said("cannot write %s: %s", xml_path8, win_error(e));
    goto done;
  }
  /* the task first, then the service goes (one mode at a time): a task
   * that cannot be made leaves the service as it was */
  char *args[] = {"schtasks", "/Create", "/TN", p->name8,
                  "/XML",     xml_path8, "/F",  NULL};
  if (schtasks("cannot install the logon task", args) != 0)
    goto done;
  if (existed)
    said("the logon task %s was already installed: updated it", p->name8);
  else
    said("installed the logon task %s: at each logon of %s it runs %s "
         "--desktop %s %s in that session",
         p->name8, user8, p->exe8, p->name8, p->script8);
  said("its definition: %s (schtasks /Create /TN %s /XML <that file> /F "
       "installs it again)",
       xml_path8, p->name8);
  if (service_remove(p) < 0) {
    said("the service %s is still installed beside the logon task: "
         "goliat-host --install desktop again removes it",
         p->name8);
    goto done;
  }
  rc = 0;
  HANDLE running = desk_open_event(p->name, L"stop", SYNCHRONIZE);
  DWORD session = 0;
  ProcessIdToSessionId(GetCurrentProcessId(), &session);
  if (running) {
    CloseHandle(running);
    said("the desktop agent %s already runs: left running; the new "
         "definition applies from the next logon (an edited agent.lua or "
         "settings file: goliat-host --reload %s)",
         p->name8, p->name8);
  } else if ((me || !user_opt) && session != 0 &&
             (!me || _wcsicmp(me, user) == 0)) {
    char *run[] = {"schtasks", "/Run", "/TN", p->name8, NULL};
    int seen = 0;
    if (schtasks("cannot start the logon task now", run) == 0)
      for (int i = 0; i < 50 && !seen; i++) {
        Sleep(200);
        HANDLE h = desk_open_event(p->name, L"stop", SYNCHRONIZE);
        if (h) {
          CloseHandle(h);
          seen = 1;
        }
      }
    if (seen)
      said("started it now in this session (%lu); its log: %s\\%s.log",
           (unsigned long)session, p->dir8, p->name8);
    else
      said("asked Task Scheduler to start it now, but it has not started "
           "within 10 s (see the task's history in Task Scheduler); it "
           "starts at the next logon of %s",
           user8);
  } else {
    said("it starts at the next logon of %s; its log: %s\\%s.log", user8,
         p->dir8, p->name8);
  }
  autologon_note(user);
done:
  free(user);
  free(me);
  free(user8);
  free(xml_path);
  free(xml_path8);
  free(xml);
  return rc;
}

static const char install_usage[] =
    "usage: goliat-host --install service [--name NAME]\n"
    "       goliat-host --install desktop [--user USER] [--name NAME]\n"
    "       goliat-host --uninstall [--name NAME]\n";

/* goliat-host --install service|desktop [...], --uninstall [--name NAME] */
int plat_install(int argc, char **argv) {
  command_output();
  int uninstall = strcmp(argv[1], "--uninstall") == 0;
  const char *mode = NULL, *name = "goliat-agent", *user = NULL;
  int i = 2;
  if (!uninstall) {
    if (argc < 3 ||
        (strcmp(argv[2], "service") != 0 && strcmp(argv[2], "desktop") != 0)) {
      fputs(install_usage, stderr);
      return 2;
    }
    mode = argv[i++];
  }
  for (; i < argc; i++) {
    if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
      name = argv[++i];
    } else if (strcmp(argv[i], "--user") == 0 && i + 1 < argc && mode &&
               strcmp(mode, "desktop") == 0) {
      user = argv[++i];
    } else {
      fprintf(stderr, "goliat-host: %s: unexpected %s\n%s", argv[1], argv[i],
              install_usage);
      return 2;
    }
  }
  if (!valid_name(name)) {
    fprintf(stderr,
            "goliat-host: --name %s: 1 to 64 letters, digits, '-', '_' and "
            "'.', please\n",
            name);
    return 2;
  }
  if (!elevated()) {
    fprintf(stderr,
            "goliat-host: %s changes Windows services and scheduled tasks, "
            "which needs an administrator: run this from an elevated "
            "prompt: right-click Command Prompt (or PowerShell), Run as "
            "administrator. Nothing was changed.\n",
            argv[1]);
    return 2;
  }
  agent_paths p;
  int rc = 1;
  if (!agent_paths_find(&p, name)) {
    fputs("goliat-host: cannot find goliat-host.exe's own path\n", stderr);
  } else if (uninstall) {
    int r = service_remove(&p);
    int d = r < 0 ? -1 : desktop_remove(&p); /* 2: not ours, left alone */
    if (r == 0 && d == 0)
      said("nothing to remove: no service and no logon task named %s", p.name8);
    rc = r < 0 || d < 0 ? 1 : 0;
  } else if (!is_file(p.script)) {
    fprintf(stderr,
            "goliat-host: %s is missing: put goliat-host.exe and the "
            "scripts folder of the zip together (README.md, \"Installing on "
            "a VM\"). Nothing was changed.\n",
            p.script8);
  } else if (strcmp(mode, "service") == 0) {
    rc = install_service(&p);
  } else {
    rc = install_desktop(&p, user);
  }
  agent_paths_free(&p);
  return rc;
}

int plat_session_id(int pid, unsigned long *id, int *console) {
  if (pid) {
    /* a process that runs (wine answers for any pid: its own session) */
    HANDLE h =
        OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, FALSE, (DWORD)pid);
    DWORD code = 0;
    if (!h) {
      DWORD e = GetLastError();
      /* what Windows says of a pid that names no process any more */
      return e == ERROR_INVALID_PARAMETER ? UV_ESRCH
                                          : uv_translate_sys_error((int)e);
    }
    BOOL ok = GetExitCodeProcess(h, &code);
    CloseHandle(h);
    if (ok && code != STILL_ACTIVE)
      return UV_ESRCH;
  }
  DWORD session;
  if (!ProcessIdToSessionId(pid ? (DWORD)pid : GetCurrentProcessId(), &session))
    return uv_translate_sys_error((int)GetLastError());
  *id = session;
  *console = session == WTSGetActiveConsoleSessionId();
  return 0;
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
