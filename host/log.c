/* log.c: leveled, timestamped log lines for C and Lua alike, on stderr or
 * in a file rotated by size (host_log_to_file, GOLIAT_LOG_FILE).
 *
 * Only the loop's thread writes lines, so the file's state needs no lock.
 * Each line is one write to the file, opened for appending, so that what
 * another process appends to the same file (the Windows service's
 * supervisor) lands between lines, not inside one. The file's size is kept
 * in memory: stat'ed when the file is opened, then counted. Rotation closes the
 * file before renaming it, so that it works on Windows too (libuv's rename
 * replaces the target there as well). */
#include "log.h"
#include "host.h"
#include "platform.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int min_level = LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error"};

/* The log file; path is NULL while the log goes to stderr. */
static struct {
  char *path;
  char *from, *to; /* room for path.N, for rotation */
  int fd;
  int64_t size; /* bytes in the file */
  int64_t max;
  int keep;
  int rotates;  /* 0 for a device: never renamed nor emptied */
  int rotating; /* a warning written by rotate() does not rotate */
} lf = {NULL, NULL, NULL, -1, 0, 0, 0, 0, 0};

/* Longest message written; a longer one is cut (one write per line). */
#define MAX_MESSAGE (1u << 30)

static void write_line(int level, const char *msg);

int host_log_set_level(int level) {
  int old = min_level;
  min_level = level;
  return old;
}

int host_log_parse_level(const char *name) {
  for (int i = LOG_DEBUG; i <= LOG_ERROR; i++)
    if (strcmp(name, level_names[i]) == 0)
      return i;
  return -1;
}

static void close_fd(int fd) {
  uv_fs_t req;
  uv_fs_close(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
}

/* How open_file opens lf.path: for appending to what it holds (created if
 * missing); as a new file, after rotation renamed it away; emptied. */
enum { OPEN_APPEND, OPEN_NEW, OPEN_EMPTY };

/* Open lf.path for appending and learn its size; 0 or a libuv error. Never
 * through a link planted at the path (the host may run as root and log in
 * a folder that others can write; UV_FS_O_NOFOLLOW is 0 on Windows, where
 * making a link needs a privilege): the file is refused instead. A new
 * file is created exclusively; when another process created it meanwhile
 * (the Windows service's supervisor appends to the same file), that file
 * is appended to. */
static int open_file(int how) {
  const int flags = UV_FS_O_WRONLY | UV_FS_O_NOFOLLOW;
  uv_fs_t req;
  int fd;
  if (how == OPEN_EMPTY) {
    /* not O_TRUNC with O_APPEND: an append-only handle cannot truncate
     * on Windows */
    fd = uv_fs_open(NULL, &req, lf.path, flags | UV_FS_O_CREAT | UV_FS_O_TRUNC,
                    0644, NULL);
    uv_fs_req_cleanup(&req);
    if (fd < 0)
      return fd;
    close_fd(fd);
  }
  fd = UV_EEXIST;
  if (how == OPEN_NEW) {
    fd = uv_fs_open(NULL, &req, lf.path,
                    flags | UV_FS_O_APPEND | UV_FS_O_CREAT | UV_FS_O_EXCL, 0644,
                    NULL);
    uv_fs_req_cleanup(&req);
  }
  if (fd == UV_EEXIST) {
    fd = uv_fs_open(NULL, &req, lf.path, flags | UV_FS_O_APPEND | UV_FS_O_CREAT,
                    0644, NULL);
    uv_fs_req_cleanup(&req);
  }
  if (fd < 0)
    return fd;
  int rc = uv_fs_fstat(NULL, &req, fd, NULL);
  if (rc == 0) {
    lf.size = (int64_t)req.statbuf.st_size;
    lf.rotates = (req.statbuf.st_mode & S_IFMT) == S_IFREG;
  }
  uv_fs_req_cleanup(&req);
  if (rc < 0) {
    close_fd(fd);
    return rc;
  }
  lf.fd = fd;
  return 0;
}

static void forget_file(void) {
  if (lf.fd >= 0)
    close_fd(lf.fd);
  lf.fd = -1;
  free(lf.path);
  free(lf.from);
  free(lf.to);
  lf.path = lf.from = lf.to = NULL;
}

/* The log goes back to stderr, with a warning line first: "cannot <what>
 * the log file <path> (<why>)". */
static void fall_back(const char *what, int err) {
  char msg[1024];
  snprintf(msg, sizeof msg,
           "cannot %s the log file %s (%s): logging to standard error "
           "from now on",
           what, lf.path, uv_strerror(err));
  forget_file();
  write_line(LOG_WARN, msg);
}

static int rename_file(const char *from, const char *to) {
  uv_fs_t req;
  int rc = uv_fs_rename(NULL, &req, from, to, NULL);
  uv_fs_req_cleanup(&req);
  return rc;
}

/* path.(keep-1) -> path.keep, ..., path -> path.1, then a new path; with
 * keep 0, or when path cannot be renamed, path is emptied instead. What
 * went wrong is a warning line at the top of the new file. */
static void rotate(void) {
  char warn[1024] = "";
  int how = lf.keep == 0 ? OPEN_EMPTY : OPEN_NEW;
  close_fd(lf.fd);
  lf.fd = -1;
  size_t room = strlen(lf.path) + 16;
  for (int i = lf.keep - 1; i >= 1; i--) {
    snprintf(lf.from, room, "%s.%d", lf.path, i);
    snprintf(lf.to, room, "%s.%d", lf.path, i + 1);
    int rc = rename_file(lf.from, lf.to);
    if (rc < 0 && rc != UV_ENOENT && !warn[0])
      snprintf(warn, sizeof warn, "cannot rename the log file %s to %s (%s)",
               lf.from, lf.to, uv_strerror(rc));
  }
  if (lf.keep > 0) {
    snprintf(lf.to, room, "%s.1", lf.path);
    int rc = rename_file(lf.path, lf.to);
    if (rc < 0 && rc != UV_ENOENT) {
      snprintf(warn, sizeof warn,
               "cannot rename the log file %s to %s (%s): emptied it "
               "instead, its earlier lines are lost",
               lf.path, lf.to, uv_strerror(rc));
      how = OPEN_EMPTY;
    }
  }
  int rc = open_file(how);
  if (rc < 0) {
    fall_back("reopen", rc);
    return;
  }
  if (warn[0]) {
    lf.rotating = 1;
    write_line(LOG_WARN, warn);
    lf.rotating = 0;
  }
}

/* One whole line to the log file, or to stderr. */
static void emit(const char *line, size_t len) {
  if (lf.fd >= 0 && lf.rotates && !lf.rotating && lf.size > 0 &&
      (int64_t)len > lf.max - lf.size)
    rotate();
  if (lf.fd >= 0) {
    uv_buf_t buf = uv_buf_init((char *)line, (unsigned)len);
    uv_fs_t req;
    int rc = uv_fs_write(NULL, &req, lf.fd, &buf, 1, -1, NULL);
    uv_fs_req_cleanup(&req);
    if (rc > 0)
      lf.size += rc;
    if (rc >= 0 && (size_t)rc == len)
      return;
    fall_back("write to", rc < 0 ? rc : UV_EIO);
  }
  fwrite(line, 1, len, stderr);
  fflush(stderr);
}

static void write_line(int level, const char *msg) {
  uv_timeval64_t tv;
  struct tm tm;
  char stamp[64] = "?";
  if (uv_gettimeofday(&tv) == 0 && plat_gmtime((time_t)tv.tv_sec, &tm) == 0)
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(tv.tv_usec / 1000));
  char head[96];
  int hlen = snprintf(head, sizeof head, "%s %-5s ", stamp, level_names[level]);
  if (hlen < 0 || hlen >= (int)sizeof head)
    hlen = 0;
  size_t mlen = strlen(msg);
  if (mlen > MAX_MESSAGE)
    mlen = MAX_MESSAGE;
  char small[1024];
  char *line = small;
  if ((size_t)hlen + mlen + 1 > sizeof small &&
      (line = malloc((size_t)hlen + mlen + 1)) == NULL) {
    line = small; /* out of memory: the message is cut */
    mlen = sizeof small - 1 - (size_t)hlen;
  }
  memcpy(line, head, (size_t)hlen);
  memcpy(line + hlen, msg, mlen);
  line[(size_t)hlen + mlen] = '\n';
  emit(line, (size_t)hlen + mlen + 1);
  if (line != small)
    free(line);
}

int host_log_to_file(const char *path, int64_t max_bytes, int keep) {
  host_log_close();
  size_t n = strlen(path);
  lf.path = malloc(n + 1);
  lf.from = malloc(n + 16);
  lf.to = malloc(n + 16);
  if (!lf.path || !lf.from || !lf.to) {
    forget_file();
    write_line(LOG_WARN, "out of memory for the log file: logging to "
                         "standard error");
    return UV_ENOMEM;
  }
  memcpy(lf.path, path, n + 1);
  lf.max = max_bytes;
  lf.keep = keep;
  int rc = open_file(OPEN_APPEND);
  if (rc < 0)
    fall_back("open", rc);
  return rc;
}

void host_log_close(void) {
  forget_file();
}

void host_log(int level, const char *fmt, ...) {
  if (level < min_level)
    return;
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  write_line(level, buf);
}

/* host.log.<level>(fmt, ...): string.format when there are arguments. */
static int log_at(lua_State *L, int level) {
  if (level < min_level)
    return 0;
  if (lua_gettop(L) > 1) {
    lua_getglobal(L, "string");
    lua_getfield(L, -1, "format");
    lua_insert(L, 1);
    lua_pop(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
  }
  write_line(level, luaL_tolstring(L, 1, NULL));
  return 0;
}

static int l_debug(lua_State *L) {
  return log_at(L, LOG_DEBUG);
}
static int l_info(lua_State *L) {
  return log_at(L, LOG_INFO);
}
static int l_warn(lua_State *L) {
  return log_at(L, LOG_WARN);
}
static int l_error(lua_State *L) {
  return log_at(L, LOG_ERROR);
}

static int l_set_level(lua_State *L) {
  int level = host_log_parse_level(luaL_checkstring(L, 1));
  luaL_argcheck(L, level >= 0, 1, "expected debug, info, warn or error");
  lua_pushstring(L, level_names[host_log_set_level(level)]);
  return 1;
}

/* host.log.to_file(path[, max_bytes[, keep]]) -> true | nil, msg, code:
 * as GOLIAT_LOG_FILE (a settings file may name the log file). */
static int l_to_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, HOST_LOG_MAX_BYTES);
  lua_Integer keep = luaL_optinteger(L, 3, HOST_LOG_KEEP);
  luaL_argcheck(L, max > 0, 2, "must be > 0");
  luaL_argcheck(L, keep >= 0 && keep <= HOST_LOG_KEEP_MAX, 3, "out of range");
  int rc = host_log_to_file(path, (int64_t)max, (int)keep);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.log.file() -> the log file's path, or nil (standard error) */
static int l_file(lua_State *L) {
  if (lf.path)
    lua_pushstring(L, lf.path);
  else
    lua_pushnil(L);
  return 1;
}

void host_open_log(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"debug", l_debug},         {"info", l_info},
      {"warn", l_warn},           {"error", l_error},
      {"set_level", l_set_level}, {"to_file", l_to_file},
      {"file", l_file},           {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "log");
}
