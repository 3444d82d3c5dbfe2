/* lua_utf8.c: UTF-8 versions of the C runtime calls that Lua 5.4 makes with
 * file names, environment names and commands (see lua_utf8.h). Compiled
 * into the Windows build of Lua by host/windows/build.sh. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <wchar.h>
#include <windows.h>

/* s as a malloc'd UTF-16 string; NULL (errno EILSEQ) when s is not valid
 * UTF-8, or on lack of memory. */
static wchar_t *to_wide(const char *s) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  if (n <= 0) {
    errno = EILSEQ;
    return NULL;
  }
  wchar_t *w = malloc((size_t)n * sizeof *w);
  if (!w) {
    errno = ENOMEM;
    return NULL;
  }
  MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, w, n);
  return w;
}

FILE *goliat_utf8_fopen(const char *path, const char *mode) {
  wchar_t *wp = to_wide(path), *wm = to_wide(mode);
  FILE *f;
  if (!wp || !wm)
    f = wp ? NULL : fopen(path, mode); /* not UTF-8: as the ANSI runtime */
  else
    f = _wfopen(wp, wm);
  free(wp);
  free(wm);
  return f;
}

FILE *goliat_utf8_freopen(const char *path, const char *mode, FILE *stream) {
  wchar_t *wp = to_wide(path), *wm = to_wide(mode);
  FILE *f;
  if (!wp || !wm)
    f = wp ? NULL : freopen(path, mode, stream);
  else
    f = _wfreopen(wp, wm, stream);
  free(wp);
  free(wm);
  return f;
}

int goliat_utf8_remove(const char *path) {
  wchar_t *wp = to_wide(path);
  int rc = wp ? _wremove(wp) : remove(path);
  free(wp);
  return rc;
}

/* As on POSIX, an existing target is replaced. */
int goliat_utf8_rename(const char *from, const char *to) {
  wchar_t *wf = to_wide(from), *wt = to_wide(to);
  int rc;
  if (!wf || !wt) {
    rc = rename(from, to);
  } else if (MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING)) {
    rc = 0;
  } else {
    DWORD e = GetLastError();
    errno = e == ERROR_FILE_NOT_FOUND || e == ERROR_PATH_NOT_FOUND ? ENOENT
            : e == ERROR_ACCESS_DENIED                             ? EACCES
                                                                   : EIO;
    rc = -1;
  }
  free(wf);
  free(wt);
  return rc;
}

/* The process environment (which host.sys.setenv changes), not the C
 * runtime's copy of it. The result is valid until the next call. */
char *goliat_utf8_getenv(const char *name) {
  static char *last;
  wchar_t *wn = to_wide(name);
  if (!wn)
    return getenv(name);
  char *out = NULL;
  DWORD n = GetEnvironmentVariableW(wn, NULL, 0);
  wchar_t *wv = n ? malloc(n * sizeof *wv) : NULL;
  if (wv && GetEnvironmentVariableW(wn, wv, n) < n) {
    int len = WideCharToMultiByte(CP_UTF8, 0, wv, -1, NULL, 0, NULL, NULL);
    out = len > 0 ? malloc((size_t)len) : NULL;
    if (out)
      WideCharToMultiByte(CP_UTF8, 0, wv, -1, out, len, NULL, NULL);
  }
  free(wv);
  free(wn);
  free(last);
  last = out;
  return out;
}

int goliat_utf8_system(const char *cmd) {
  if (!cmd)
    return system(NULL);
  wchar_t *wc = to_wide(cmd);
  int rc = wc ? _wsystem(wc) : system(cmd);
  free(wc);
  return rc;
}

FILE *goliat_utf8_popen(const char *cmd, const char *mode) {
  wchar_t *wc = to_wide(cmd), *wm = to_wide(mode);
  FILE *f;
  if (!wc || !wm)
    f = wc ? NULL : _popen(cmd, mode);
  else
    f = _wpopen(wc, wm);
  free(wc);
  free(wm);
  return f;
}
