/* fs.c: host.fs: whole-file reads, atomic writes and directory helpers.
 *
 * Everything goes through libuv's synchronous fs calls (a NULL callback), so
 * paths are UTF-8 on Windows too. The files an agent handles are small
 * (configs, state, reports): blocking the loop for them is cheaper than the
 * bookkeeping of doing it asynchronously.
 */
#include "fs.h"
#include "host.h"
#include "platform.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef S_IFMT
#define S_IFMT 0170000
#endif
#ifndef S_IFDIR
#define S_IFDIR 0040000
#endif
#ifndef S_IFREG
#define S_IFREG 0100000
#endif
#ifndef S_IFLNK
#define S_IFLNK 0120000
#endif
#ifndef S_IFIFO
#define S_IFIFO 0010000
#endif
#ifndef S_IFCHR
#define S_IFCHR 0020000
#endif
#ifndef S_IFBLK
#define S_IFBLK 0060000
#endif
#ifndef S_IFSOCK
#define S_IFSOCK 0140000
#endif

#define READ_CHUNK 4096 /* the first read of a file of unknown size */

static int is_sep(char c) {
  return c == '/' || c == '\\';
}

/* Synchronous uv_fs_stat; fills *st and returns 0 or a libuv error. */
static int stat_path(const char *path, uv_stat_t *st) {
  uv_fs_t req;
  memset(st, 0, sizeof *st);
  int rc = uv_fs_stat(NULL, &req, path, NULL);
  if (rc == 0)
    *st = req.statbuf;
  uv_fs_req_cleanup(&req);
  return rc;
}

/* The same for the path itself: a symbolic link is not followed. */
int host_fs_check_dir(const char *path) {
  uv_stat_t st;
  int rc = stat_path(path, &st);
  if (rc == 0 && (st.st_mode & S_IFMT) != S_IFDIR)
    rc = UV_ENOTDIR;
  return rc;
}

static int lstat_path(const char *path, uv_stat_t *st) {
  uv_fs_t req;
  memset(st, 0, sizeof *st);
  int rc = uv_fs_lstat(NULL, &req, path, NULL);
  if (rc == 0)
    *st = req.statbuf;
  uv_fs_req_cleanup(&req);
  return rc;
}

static int open_path(const char *path, int flags, int mode) {
  uv_fs_t req;
  int rc = uv_fs_open(NULL, &req, path, flags, mode, NULL);
  uv_fs_req_cleanup(&req);
  return rc; /* a file descriptor, or a negative libuv error */
}

static void close_fd(int fd) {
  uv_fs_t req;
  uv_fs_close(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
}

/* What a file that is neither a regular file nor a folder is, for a
 * message. */
static const char *special_name(uint64_t type) {
  switch (type & S_IFMT) {
  case S_IFIFO:
    return "a FIFO";
  case S_IFCHR:
    return "a character device";
  case S_IFBLK:
    return "a block device";
  case S_IFSOCK:
    return "a socket";
  default:
    return "of an unknown type";
  }
}

/* Open path with flags as a regular file: with O_NONBLOCK (POSIX), so that
 * a FIFO or a device planted where the agent reads or writes cannot hold
 * the thread at the open, then checked with fstat. Returns the file
 * descriptor, or UV_EISDIR for a folder, UV_EFTYPE for anything else that
 * is not a regular file (*type says what; nothing is read from it or
 * written to it), or another libuv error. */
static int open_regular(const char *path, int flags, int mode, uint64_t *type) {
  uv_fs_t req;
  *type = S_IFREG;
  int fd = open_path(path, flags | UV_FS_O_NONBLOCK, mode);
  if (fd == UV_ENXIO) {
    /* a socket, or a FIFO opened to write with no reader */
    int rc = uv_fs_stat(NULL, &req, path, NULL);
    uint64_t t = rc == 0 ? req.statbuf.st_mode & S_IFMT : S_IFREG;
    uv_fs_req_cleanup(&req);
    if (t != S_IFREG && t != S_IFDIR) {
      *type = t;
      fd = UV_EFTYPE;
    }
  }
  if (fd < 0)
    return fd;
  int rc = uv_fs_fstat(NULL, &req, fd, NULL);
  if (rc == 0)
    *type = req.statbuf.st_mode & S_IFMT;
  uv_fs_req_cleanup(&req);
  if (rc == 0 && *type != S_IFREG)
    rc = *type == S_IFDIR ? UV_EISDIR : UV_EFTYPE;
  if (rc < 0) {
    close_fd(fd);
    return rc;
  }
  return fd;
}

/* Push the failure of open_regular. */
static int fail_open(lua_State *L, int err, const char *path, uint64_t type) {
  if (err == UV_EFTYPE)
    return host_fail(L, "EFTYPE", "%s: not a regular file (%s)", path,
                     special_name(type));
  return host_fail_uv(L, err, path);
}

int host_fs_write_all(int fd, const char *data, size_t len) {
  while (len > 0) {
    size_t n = len > (1u << 30) ? (1u << 30) : len;
    uv_buf_t buf = uv_buf_init((char *)data, (unsigned)n);
    uv_fs_t req;
    int rc = uv_fs_write(NULL, &req, fd, &buf, 1, -1, NULL);
    uv_fs_req_cleanup(&req);
    if (rc < 0)
      return rc;
    if (rc == 0)
      return UV_EIO;
    data += rc;
    len -= (size_t)rc;
  }
  return 0;
}

static int fsync_fd(int fd) {
  uv_fs_t req;
  int rc = uv_fs_fsync(NULL, &req, fd, NULL);
  uv_fs_req_cleanup(&req);
  return rc;
}

/* Read fd to its end into a malloc'd buffer: sized by the file's size
 * (plus one byte, so that the read seeing the end needs no room), grown
 * when the file is longer than it said (a file being written, /proc). */
static int read_all(int fd, char **out, size_t *outlen) {
  size_t cap = READ_CHUNK, len = 0;
  uv_fs_t st;
  if (uv_fs_fstat(NULL, &st, fd, NULL) == 0 && st.statbuf.st_size > 0 &&
      st.statbuf.st_size < SIZE_MAX / 4)
    cap = (size_t)st.statbuf.st_size + 1;
  uv_fs_req_cleanup(&st);
  char *buf = malloc(cap);
  if (!buf)
    return UV_ENOMEM;
  for (;;) {
    if (len == cap) {
      char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        return UV_ENOMEM;
      }
      buf = nb;
      cap *= 2;
    }
    size_t room = cap - len;
    if (room > (1u << 30))
      room = 1u << 30;
    uv_buf_t b = uv_buf_init(buf + len, (unsigned)room);
    uv_fs_t req;
    int rc = uv_fs_read(NULL, &req, fd, &b, 1, -1, NULL);
    uv_fs_req_cleanup(&req);
    if (rc < 0) {
      free(buf);
      return rc;
    }
    if (rc == 0)
      break;
    len += (size_t)rc;
  }
  *out = buf;
  *outlen = len;
  return 0;
}

/* host.fs.read(path) -> string | nil, msg, code */
static int l_read(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uint64_t type;
  int fd = open_regular(path, UV_FS_O_RDONLY, 0, &type);
  if (fd < 0)
    return fail_open(L, fd, path, type);
  char *buf = NULL;
  size_t len = 0;
  int rc = read_all(fd, &buf, &len);
  close_fd(fd);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushlstring(L, buf, len); /* on a memory error buf leaks: rare */
  free(buf);
  return 1;
}

/* ---- temporary files ----
 *
 * "<path>.tmp-<pid>-<n>" (the agent's Lua code removes leftovers by that
 * form), where n is 64 random bits in decimal: the host may run as root in
 * folders others can write, so nobody may guess the name and plant a link
 * there first. The file is created exclusively (CREATE_NEW on Windows),
 * never through a link; a name taken already is tried again with another
 * number. */
#define TEMP_TRIES 8
#define TEMP_FLAGS                                                             \
  (UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_EXCL | UV_FS_O_NOFOLLOW)

/* 64 random bits; without a random source, a counter mixed with the clock
 * (distinct, if not secret). */
static uint64_t temp_number(void) {
  static uint64_t fallback;
  uint64_t v;
  if (uv_random(NULL, NULL, &v, sizeof v, 0, NULL) == 0)
    return v;
  fallback += UINT64_C(0x9E3779B97F4A7C15);
  return fallback ^ (uv_hrtime() * UINT64_C(0xBF58476D1CE4E5B9));
}

/* A malloc'd new temporary name for path, or NULL when out of memory. */
static char *temp_name(const char *path) {
  char digits[24];
  size_t i = sizeof digits;
  uint64_t v = temp_number();
  digits[--i] = '\0';
  do {
    digits[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v > 0);
  size_t size = strlen(path) + 64;
  char *name = malloc(size);
  if (name)
    snprintf(name, size, "%s.tmp-%d-%s", path, (int)uv_os_getpid(), digits + i);
  return name;
}

/* Create a new temporary file for path, open for writing; returns its file
 * descriptor or a libuv error. *name is the malloc'd name of the file (the
 * last one tried on an error; NULL when out of memory). */
static int create_temp(const char *path, int mode, char **name) {
  int fd = UV_EEXIST;
  *name = NULL;
  for (int i = 0; i < TEMP_TRIES && fd == UV_EEXIST; i++) {
    free(*name);
    *name = temp_name(path);
    if (!*name)
      return UV_ENOMEM;
    fd = open_path(*name, TEMP_FLAGS, mode);
  }
  return fd;
}

static void unlink_path(const char *path) {
  uv_fs_t req;
  uv_fs_unlink(NULL, &req, path, NULL);
  uv_fs_req_cleanup(&req);
}

static int rename_path(const char *from, const char *to) {
  uv_fs_t req;
  int rc = uv_fs_rename(NULL, &req, from, to, NULL);
  uv_fs_req_cleanup(&req);
  return rc;
}

/* Failure of the temporary file tmp (NULL when out of memory) of path. */
static int fail_temp(lua_State *L, int err, const char *path, const char *tmp) {
  if (!tmp)
    return host_fail_uv(L, err, path);
  return host_fail(L, uv_err_name(err), "%s: %s (temporary file %s)", path,
                   uv_strerror(err), tmp);
}

/* host.fs.write_atomic(path, data) -> true | nil, msg, code */
static int l_write_atomic(lua_State *L) {
  size_t len;
  const char *path = luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &len);
  int sync = 1; /* opts.sync = false: no flush (a file that may be lost) */
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "sync");
    luaL_argcheck(L, lua_isnil(L, -1) || lua_isboolean(L, -1), 3,
                  "sync must be a boolean");
    sync = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  /* owner-only: the agent's state, reports and configs are nobody else's */
  char *tmp;
  int rc = create_temp(path, 0600, &tmp);
  if (rc >= 0) {
    int fd = rc;
    rc = host_fs_write_all(fd, data, len);
    if (rc == 0 && sync)
      rc = fsync_fd(fd);
    close_fd(fd);
    if (rc < 0)
      unlink_path(tmp);
  }
  if (rc < 0) {
    int n = fail_temp(L, rc, path, tmp);
    free(tmp);
    return n;
  }
  rc = rename_path(tmp, path);
  if (rc < 0)
    unlink_path(tmp);
  free(tmp);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.fs.sync(path) -> true | nil, msg, code: the file's data flushed to
 * the disk (for a file written by other means than write_atomic). */
static int l_sync(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  /* a folder is refused on every platform (Windows opens one and flushes
   * it without complaint) */
  if (host_fs_check_dir(path) == 0)
    return host_fail_uv(L, UV_EISDIR, path);
  /* read-write: Windows flushes only a handle that may write */
  uint64_t type;
  int fd = open_regular(path, UV_FS_O_RDWR, 0, &type);
  if (fd < 0)
    return fail_open(L, fd, path, type);
  int rc = fsync_fd(fd);
  close_fd(fd);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.fs.append(path, data) -> true | nil, msg, code */
static int l_append(lua_State *L) {
  size_t len;
  const char *path = luaL_checkstring(L, 1);
  const char *data = luaL_checklstring(L, 2, &len);
  /* never through a link planted at path (UV_FS_O_NOFOLLOW is 0 on
   * Windows, where making a link needs a privilege) */
  uint64_t type;
  int fd = open_regular(
      path, UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_APPEND | UV_FS_O_NOFOLLOW,
      0644, &type);
  if (fd < 0)
    return fail_open(L, fd, path, type);
  int rc = host_fs_write_all(fd, data, len);
  close_fd(fd);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* Copy the open file `from` to a new temporary file, then rename it over
 * `to` (a link planted at `to` is replaced, not written through); returns
 * the bytes copied or a libuv error. *tmp is the temporary file's
 * malloc'd name (see create_temp). */
static int64_t copy_fd(int from, const char *to, char **tmp) {
  int out = create_temp(to, 0644, tmp);
  if (out < 0)
    return out;
  char *buf = malloc(READ_CHUNK);
  int64_t total = buf ? 0 : UV_ENOMEM;
  while (buf) {
    uv_buf_t b = uv_buf_init(buf, READ_CHUNK);
    uv_fs_t req;
    int n = uv_fs_read(NULL, &req, from, &b, 1, -1, NULL);
    uv_fs_req_cleanup(&req);
    if (n == 0)
      break;
    int rc = n < 0 ? n : host_fs_write_all(out, buf, (size_t)n);
    if (rc < 0) {
      total = rc;
      break;
    }
    total += n;
  }
  free(buf);
  close_fd(out);
  if (total < 0) {
    unlink_path(*tmp);
    return total;
  }
  int rc = rename_path(*tmp, to);
  if (rc < 0) {
    unlink_path(*tmp);
    return rc;
  }
  return total;
}

/* host.fs.copy_truncate(path, copy) -> bytes | nil, msg, code: copy the
 * file at path to `copy` (replacing it), then empty path. Made for a log
 * that a running process appends to (opened with O_APPEND, as host.proc
 * opens stdout files): its next write starts the emptied file. Lines
 * written between the copy and the truncation are lost. */
static int l_copy_truncate(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  const char *copy = luaL_checkstring(L, 2);
  uint64_t type;
  int fd = open_regular(path, UV_FS_O_RDWR, 0, &type);
  if (fd < 0)
    return fail_open(L, fd, path, type);
  char *tmp;
  int64_t copied = copy_fd(fd, copy, &tmp);
  if (copied < 0) {
    close_fd(fd);
    int n = fail_temp(L, (int)copied, copy, tmp);
    free(tmp);
    return n;
  }
  free(tmp);
  uv_fs_t req;
  int rc = uv_fs_ftruncate(NULL, &req, fd, 0, NULL);
  uv_fs_req_cleanup(&req);
  close_fd(fd);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushinteger(L, (lua_Integer)copied);
  return 1;
}

/* host.fs.space(path) -> {free = bytes, total = bytes} | nil, msg, code:
 * the space of the file system holding path (free: what an unprivileged
 * user may still use). */
static int l_space(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int rc = uv_fs_statfs(NULL, &req, path, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(&req);
    return host_fail_uv(L, rc, path);
  }
  const uv_statfs_t *st = req.ptr;
  lua_createtable(L, 0, 2);
  lua_pushinteger(L, (lua_Integer)(st->f_bavail * st->f_bsize));
  lua_setfield(L, -2, "free");
  lua_pushinteger(L, (lua_Integer)(st->f_blocks * st->f_bsize));
  lua_setfield(L, -2, "total");
  uv_fs_req_cleanup(&req);
  return 1;
}

/* Whether the folder part of path (before its last separator) exists and
 * is not a folder. */
static int parent_is_not_dir(const char *path) {
  size_t n = strlen(path);
  while (n > 0 && !is_sep(path[n - 1]))
    n--;
  if (n < 2)
    return 0;
  char *parent = malloc(n);
  if (!parent)
    return 0;
  memcpy(parent, path, n - 1);
  parent[n - 1] = '\0';
  uv_stat_t st;
  int yes = stat_path(parent, &st) == 0 && (st.st_mode & S_IFMT) != S_IFDIR;
  free(parent);
  return yes;
}

static int mkdir_one(const char *path) {
  uv_fs_t req;
  int rc = uv_fs_mkdir(NULL, &req, path, 0755, NULL);
  uv_fs_req_cleanup(&req);
  if (rc == UV_EEXIST) {
    uv_stat_t st;
    if (stat_path(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
      return 0;
  }
  /* a file in the way of a parent: ENOTDIR as on POSIX (Windows says
   * ENOENT) */
  if (rc == UV_ENOENT && parent_is_not_dir(path))
    rc = UV_ENOTDIR;
  return rc;
}

/* host.fs.mkdir_p(path) -> true | nil, msg, code */
static int l_mkdir_p(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  luaL_argcheck(L, len > 0, 1, "empty path");
  char *buf = lua_newuserdatauv(L, len + 1, 0); /* freed by the GC */
  memcpy(buf, path, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (i < len && !is_sep(buf[i]))
      continue;
    if (i < len && buf[i - 1] == ':') /* "C:\" */
      continue;
    char saved = buf[i];
    buf[i] = '\0';
    int rc = is_sep(buf[i - 1]) ? 0 : mkdir_one(buf);
    buf[i] = saved;
    if (rc < 0 && !(rc == UV_EEXIST || (rc == UV_EPERM && i < len)))
      return host_fail_uv(L, rc, path);
  }
  uv_stat_t st; /* EEXIST above may have been a file in the way */
  int rc = stat_path(path, &st);
  if (rc == 0 && (st.st_mode & S_IFMT) != S_IFDIR)
    rc = UV_EEXIST;
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

static int l_exists(lua_State *L) {
  uv_stat_t st;
  lua_pushboolean(L, stat_path(luaL_checkstring(L, 1), &st) == 0);
  return 1;
}

static const char *type_name(uint64_t mode) {
  switch (mode & S_IFMT) {
  case S_IFREG:
    return "file";
  case S_IFDIR:
    return "directory";
  case S_IFLNK:
    return "link";
  default:
    return "other";
  }
}

/* host.fs.stat(path) -> {type, size, mtime} | nil, msg, code */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_stat_t st;
  int rc = lstat_path(path, &st);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_createtable(L, 0, 3);
  lua_pushstring(L, type_name(st.st_mode));
  lua_setfield(L, -2, "type");
  lua_pushinteger(L, (lua_Integer)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec +
                        (lua_Number)st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  return 1;
}

/* host.fs.remove(path) -> true | nil, msg, code */
static int l_remove(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_stat_t st;
  uv_fs_t req;
  int rc = lstat_path(path, &st); /* a link is removed, not its target */
  if (rc == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
    rc = uv_fs_rmdir(NULL, &req, path, NULL);
  else
    rc = uv_fs_unlink(NULL, &req, path, NULL);
  uv_fs_req_cleanup(&req);
  if (rc < 0)
    return host_fail_uv(L, rc, path);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.fs.rename(from, to) -> true | nil, msg, code. Replaces `to` when it
 * is a file (on Windows too); a link `from` is moved, not its target. */
static int l_rename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  uv_fs_t req;
  int rc = uv_fs_rename(NULL, &req, from, to, NULL);
  uv_fs_req_cleanup(&req);
  if (rc < 0)
    return host_fail_uv(L, rc, from);
  lua_pushboolean(L, 1);
  return 1;
}

/* host.fs.list(path) -> sorted array of names | nil, msg, code */
static int l_list(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  uv_fs_t req;
  int rc = uv_fs_scandir(NULL, &req, path, 0, NULL);
  if (rc < 0) {
    uv_fs_req_cleanup(&req);
    return host_fail_uv(L, rc, path);
  }
  lua_createtable(L, rc, 0);
  uv_dirent_t ent;
  lua_Integer n = 0;
  while (uv_fs_scandir_next(&req, &ent) != UV_EOF) {
    lua_pushstring(L, ent.name);
    lua_rawseti(L, -2, ++n);
  }
  uv_fs_req_cleanup(&req);
  lua_getglobal(L, "table");
  lua_getfield(L, -1, "sort");
  lua_pushvalue(L, -3);
  lua_call(L, 1, 0);
  lua_pop(L, 1);
  return 1;
}

/* host.fs.join(a, b, ...): one '/' between parts. */
static int l_join(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int last_sep = 1; /* nothing written yet */
  for (int i = 1; i <= n; i++) {
    size_t len;
    const char *part = luaL_checklstring(L, i, &len);
    if (len == 0)
      continue;
    if (i > 1 && !last_sep && !is_sep(part[0]))
      luaL_addchar(&b, '/');
    if (i > 1 && last_sep && is_sep(part[0]) && luaL_bufflen(&b) > 0) {
      part++;
      len--;
    }
    luaL_addlstring(&b, part, len);
    last_sep = len > 0 ? is_sep(part[len - 1]) : last_sep;
  }
  luaL_pushresult(&b);
  return 1;
}

/* ---- host.fs.lock(path) -> lock | nil, msg, code ("EBUSY": held by
 * another process). The lock lasts while the lock object lives, until
 * lock:unlock(), or until the process ends in any way. ---- */
#define LOCK_MT "goliat.fs.lock"

typedef struct {
  plat_lock *lock;
} lock_ud;

static int l_lock(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lock_ud *ud = lua_newuserdatauv(L, sizeof *ud, 0);
  ud->lock = NULL;
  luaL_setmetatable(L, LOCK_MT);
  int rc = plat_lock_file(path, &ud->lock);
  if (rc == UV_EBUSY)
    return host_fail(L, "EBUSY", "%s: locked by another process", path);
  if (rc != 0)
    return host_fail_uv(L, rc, path);
  return 1;
}

static int l_unlock(lua_State *L) {
  lock_ud *ud = luaL_checkudata(L, 1, LOCK_MT);
  plat_unlock(ud->lock);
  ud->lock = NULL;
  return 0;
}

void host_open_fs(lua_State *L) {
  static const luaL_Reg lock_methods[] = {{"unlock", l_unlock}, {NULL, NULL}};
  luaL_newmetatable(L, LOCK_MT);
  luaL_newlib(L, lock_methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_unlock);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  static const luaL_Reg funcs[] = {{"lock", l_lock},
                                   {"read", l_read},
                                   {"write_atomic", l_write_atomic},
                                   {"append", l_append},
                                   {"sync", l_sync},
                                   {"copy_truncate", l_copy_truncate},
                                   {"space", l_space},
                                   {"mkdir_p", l_mkdir_p},
                                   {"exists", l_exists},
                                   {"stat", l_stat},
                                   {"remove", l_remove},
                                   {"rename", l_rename},
                                   {"list", l_list},
                                   {"join", l_join},
                                   {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "fs");
}
