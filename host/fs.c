/* fs.c: host.fs: whole-file reads, atomic writes and directory helpers.
 *
 * Every call goes through libuv's synchronous fs calls (a NULL callback),
 * so paths are UTF-8 on Windows too. Called from a task that may wait, an
 * operation runs on a thread of libuv's pool while the task waits and the
 * loop goes on (a file on a network share that hangs must not stop the
 * heartbeat); the operations of every task still run one at a time, in the
 * order Lua called them (see "the queue" below). Called where no task can
 * wait, it runs at once on the loop's thread.
 */
#include "fs.h"
#include "host.h"
#include "platform.h"
#include "task.h"

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

/* ---- the operations ----
 *
 * Each call that touches the disk is an fs_op: its arguments copied out of
 * Lua, run by run_op (on a thread of libuv's pool, or on the loop's thread
 * when the caller cannot wait), its results pushed by push_results. run_op
 * never touches the Lua state. */

typedef enum {
  OP_READ,
  OP_WRITE_ATOMIC,
  OP_APPEND,
  OP_SYNC,
  OP_COPY_TRUNCATE,
  OP_SPACE,
  OP_MKDIR_P,
  OP_EXISTS,
  OP_STAT,
  OP_REMOVE,
  OP_RENAME,
  OP_LIST
} op_kind;

typedef struct fs_queue fs_queue;

typedef struct fs_op {
  op_kind kind;
  /* the arguments */
  char *path;
  char *path2; /* rename's `to`, copy_truncate's `copy` */
  char *data;  /* what write_atomic or append writes */
  size_t len;
  int sync; /* write_atomic: flush the file before the rename */
  /* the results */
  int rc;           /* 0 or a libuv error */
  const char *what; /* the path that rc is about */
  char *tmp;        /* the temporary file (write_atomic, copy_truncate) */
  int tmp_failed;   /* rc is about the temporary file: the message names it */
  uint64_t type;    /* what open_regular found (UV_EFTYPE) */
  char *out;        /* read: the contents */
  size_t outlen;
  int64_t count;                    /* copy_truncate: bytes copied */
  uv_stat_t st;                     /* stat */
  uint64_t free_bytes, total_bytes; /* space */
  uv_fs_t dir; /* list: the scandir request, kept for its names */
  int has_dir;
  /* the queue (see below) */
  fs_queue *q;
  task_waiter waiter;
  uv_work_t work;
  struct fs_op *next;
  int done; /* run_op has run it */
} fs_op;

static void op_free(fs_op *op) {
  if (op->has_dir)
    uv_fs_req_cleanup(&op->dir);
  free(op->path);
  free(op->path2);
  free(op->data);
  free(op->tmp);
  free(op->out);
  free(op);
}

static void do_read(fs_op *op) {
  int fd = open_regular(op->path, UV_FS_O_RDONLY, 0, &op->type);
  if (fd < 0) {
    op->rc = fd;
    return;
  }
  op->rc = read_all(fd, &op->out, &op->outlen);
  close_fd(fd);
}

/* owner-only (0600): the agent's state, reports and configs are nobody
 * else's */
static void do_write_atomic(fs_op *op) {
  int fd = create_temp(op->path, 0600, &op->tmp);
  if (fd >= 0) {
    int rc = host_fs_write_all(fd, op->data, op->len);
    if (rc == 0 && op->sync)
      rc = fsync_fd(fd);
    close_fd(fd);
    if (rc < 0)
      unlink_path(op->tmp);
    fd = rc;
  }
  if (fd < 0) {
    op->rc = fd;
    op->tmp_failed = op->tmp != NULL;
    return;
  }
  op->rc = rename_path(op->tmp, op->path);
  if (op->rc < 0)
    unlink_path(op->tmp);
}

/* never through a link planted at path (UV_FS_O_NOFOLLOW is 0 on Windows,
 * where making a link needs a privilege) */
static void do_append(fs_op *op) {
  int fd = open_regular(op->path,
                        UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_APPEND |
                            UV_FS_O_NOFOLLOW,
                        0644, &op->type);
  if (fd < 0) {
    op->rc = fd;
    return;
  }
  op->rc = host_fs_write_all(fd, op->data, op->len);
  close_fd(fd);
}

static void do_sync(fs_op *op) {
  /* a folder is refused on every platform (Windows opens one and flushes
   * it without complaint) */
  if (host_fs_check_dir(op->path) == 0) {
    op->rc = UV_EISDIR;
    return;
  }
  /* read-write: Windows flushes only a handle that may write */
  int fd = open_regular(op->path, UV_FS_O_RDWR, 0, &op->type);
  if (fd < 0) {
    op->rc = fd;
    return;
  }
  op->rc = fsync_fd(fd);
  close_fd(fd);
}

static void do_copy_truncate(fs_op *op) {
  /* a link planted at path is not followed (its target emptied) */
  int fd =
      open_regular(op->path, UV_FS_O_RDWR | UV_FS_O_NOFOLLOW, 0, &op->type);
  if (fd < 0) {
    op->rc = fd;
    return;
  }
  op->count = copy_fd(fd, op->path2, &op->tmp);
  if (op->count < 0) {
    close_fd(fd);
    op->rc = (int)op->count;
    op->what = op->path2;
    op->tmp_failed = op->tmp != NULL;
    return;
  }
  uv_fs_t req;
  op->rc = uv_fs_ftruncate(NULL, &req, fd, 0, NULL);
  uv_fs_req_cleanup(&req);
  close_fd(fd);
}

static void do_space(fs_op *op) {
  uv_fs_t req;
  op->rc = uv_fs_statfs(NULL, &req, op->path, NULL);
  if (op->rc == 0) {
    const uv_statfs_t *st = req.ptr;
    op->free_bytes = st->f_bavail * st->f_bsize;
    op->total_bytes = st->f_blocks * st->f_bsize;
  }
  uv_fs_req_cleanup(&req);
}

static void do_mkdir_p(fs_op *op) {
  size_t len = strlen(op->path);
  char *buf = malloc(len + 1);
  if (!buf) {
    op->rc = UV_ENOMEM;
    return;
  }
  memcpy(buf, op->path, len + 1);
  int rc = 0;
  for (size_t i = 1; i <= len; i++) {
    if (i < len && !is_sep(buf[i]))
      continue;
    if (i < len && buf[i - 1] == ':') /* "C:\" */
      continue;
    char saved = buf[i];
    buf[i] = '\0';
    rc = is_sep(buf[i - 1]) ? 0 : mkdir_one(buf);
    buf[i] = saved;
    if (rc < 0 && !(rc == UV_EEXIST || (rc == UV_EPERM && i < len)))
      break;
    rc = 0;
  }
  free(buf);
  if (rc == 0) {
    uv_stat_t st; /* EEXIST above may have been a file in the way */
    rc = stat_path(op->path, &st);
    if (rc == 0 && (st.st_mode & S_IFMT) != S_IFDIR)
      rc = UV_EEXIST;
  }
  op->rc = rc;
}

static void do_remove(fs_op *op) {
  uv_stat_t st;
  uv_fs_t req;
  int rc = lstat_path(op->path, &st); /* a link is removed, not its target */
  if (rc == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
    rc = uv_fs_rmdir(NULL, &req, op->path, NULL);
  else
    rc = uv_fs_unlink(NULL, &req, op->path, NULL);
  uv_fs_req_cleanup(&req);
  op->rc = rc;
}

static void run_op(fs_op *op) {
  op->what = op->path;
  switch (op->kind) {
  case OP_READ:
    do_read(op);
    break;
  case OP_WRITE_ATOMIC:
    do_write_atomic(op);
    break;
  case OP_APPEND:
    do_append(op);
    break;
  case OP_SYNC:
    do_sync(op);
    break;
  case OP_COPY_TRUNCATE:
    do_copy_truncate(op);
    break;
  case OP_SPACE:
    do_space(op);
    break;
  case OP_MKDIR_P:
    do_mkdir_p(op);
    break;
  case OP_EXISTS:
    op->rc = stat_path(op->path, &op->st);
    break;
  case OP_STAT:
    op->rc = lstat_path(op->path, &op->st);
    break;
  case OP_REMOVE:
    do_remove(op);
    break;
  case OP_RENAME:
    op->rc = rename_path(op->path, op->path2);
    break;
  case OP_LIST:
    op->rc = uv_fs_scandir(NULL, &op->dir, op->path, 0, NULL);
    op->has_dir = 1;
    break;
  }
}

/* Push what op gives the caller; returns how many values. May raise (out
 * of memory): see push_protected. */
static int push_results(lua_State *L, fs_op *op) {
  if (op->kind == OP_EXISTS) {
    lua_pushboolean(L, op->rc == 0);
    return 1;
  }
  if (op->rc == UV_EFTYPE)
    return host_fail(L, "EFTYPE", "%s: not a regular file (%s)", op->what,
                     special_name(op->type));
  if (op->rc < 0 && op->tmp_failed)
    return host_fail(L, uv_err_name(op->rc), "%s: %s (temporary file %s)",
                     op->what, uv_strerror(op->rc), op->tmp);
  if (op->rc < 0)
    return host_fail_uv(L, op->rc, op->what);
  switch (op->kind) {
  case OP_READ:
    lua_pushlstring(L, op->out ? op->out : "", op->outlen);
    return 1;
  case OP_COPY_TRUNCATE:
    lua_pushinteger(L, (lua_Integer)op->count);
    return 1;
  case OP_SPACE:
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)op->free_bytes);
    lua_setfield(L, -2, "free");
    lua_pushinteger(L, (lua_Integer)op->total_bytes);
    lua_setfield(L, -2, "total");
    return 1;
  case OP_STAT:
    lua_createtable(L, 0, 3);
    lua_pushstring(L, type_name(op->st.st_mode));
    lua_setfield(L, -2, "type");
    lua_pushinteger(L, (lua_Integer)op->st.st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (lua_Number)op->st.st_mtim.tv_sec +
                          (lua_Number)op->st.st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    return 1;
  case OP_LIST: {
    lua_createtable(L, op->rc, 0);
    uv_dirent_t ent;
    lua_Integer n = 0;
    while (uv_fs_scandir_next(&op->dir, &ent) != UV_EOF) {
      lua_pushstring(L, ent.name);
      lua_rawseti(L, -2, ++n);
    }
    lua_getglobal(L, "table");
    lua_getfield(L, -1, "sort");
    lua_pushvalue(L, -3);
    lua_call(L, 1, 0);
    lua_pop(L, 1);
    return 1;
  }
  default:
    lua_pushboolean(L, 1);
    return 1;
  }
}

static int push_call(lua_State *L) {
  fs_op *op = lua_touserdata(L, 1);
  lua_pop(L, 1);
  return push_results(L, op);
}

/* push_results on L in protected mode: returns how many values it pushed,
 * -1 with the error on top of L, or -2 (nothing pushed) when L's stack
 * cannot grow. */
static int push_protected(lua_State *L, fs_op *op) {
  if (!lua_checkstack(L, 3))
    return -2;
  int top = lua_gettop(L);
  lua_pushcfunction(L, push_call);
  lua_pushlightuserdata(L, op);
  if (lua_pcall(L, 1, LUA_MULTRET, 0) != LUA_OK)
    return -1;
  return lua_gettop(L) - top;
}

/* ---- the queue ----
 *
 * A call from a task that may wait runs off the loop's thread, so that a
 * file operation that hangs (a network share that went away) holds its own
 * task only, never the loop (the heartbeat, the server). The operations
 * still take effect one at a time in the order Lua called them, whatever
 * the task: a write is done before any read called after it. So they are
 * not handed to libuv's pool each on its own: they wait in one FIFO queue
 * per host, and only its head is in the pool; when it is done, the loop's
 * thread wakes its task with its results and hands the next one over.
 *
 * A call that cannot wait (outside a task, inside a coroutine of a task's
 * own, a metamethod) runs on the loop's thread at once, as every call did
 * before, after the queue: it waits for the operation in the pool, then
 * runs those queued behind it (their tasks get their results in order when
 * the pool's operation comes back), then its own. */

struct fs_queue {
  host_ctx *ctx;
  fs_op *head, *tail; /* not yet handed back, in call order */
  fs_op *running;     /* the head, while in the pool */
  uv_mutex_t lock;    /* running->done, for a call that cannot wait */
  uv_cond_t ran;
  int closing;
};

static void queue_free(fs_queue *q) {
  uv_cond_destroy(&q->ran);
  uv_mutex_destroy(&q->lock);
  free(q);
}

/* Wake op's task with op's results (or forget it when nobody waits). */
static void deliver(fs_queue *q, fs_op *op) {
  lua_State *co = task_waiter_thread(&op->waiter);
  if (!co) {
    task_waiter_cancel(&op->waiter);
    return;
  }
  lua_State *L = q->ctx->L;
  int n = push_protected(L, op);
  if (n < 0) { /* out of memory: the call returns nothing */
    if (n == -1)
      lua_pop(L, 1);
    n = 0;
  } else if (!lua_checkstack(co, n)) {
    lua_pop(L, n);
    n = 0;
  } else {
    lua_xmove(L, co, n);
  }
  task_waiter_wake(&op->waiter, n);
}

static void work_run(uv_work_t *w) {
  fs_op *op = w->data;
  run_op(op);
  uv_mutex_lock(&op->q->lock);
  op->done = 1;
  uv_cond_signal(&op->q->ran);
  uv_mutex_unlock(&op->q->lock);
}

static void work_done(uv_work_t *w, int status);

static void start_head(fs_queue *q) {
  q->running = q->head;
  q->running->work.data = q->running;
  /* fails only without a work callback */
  (void)uv_queue_work(&q->ctx->loop, &q->running->work, work_run, work_done);
}

static void work_done(uv_work_t *w, int status) {
  fs_op *op = w->data;
  fs_queue *q = op->q;
  (void)status; /* never cancelled */
  q->running = NULL;
  if (q->closing) {
    op_free(op);
    queue_free(q);
    return;
  }
  /* the head, and those a call that could not wait ran meanwhile */
  while (q->head && q->head->done) {
    fs_op *d = q->head;
    q->head = d->next;
    if (!q->head)
      q->tail = NULL;
    deliver(q, d);
    op_free(d);
  }
  if (q->head)
    start_head(q);
}

/* Run everything queued, on the loop's thread (see above). */
static void queue_drain(fs_queue *q) {
  if (!q)
    return;
  if (q->running) {
    uv_mutex_lock(&q->lock);
    while (!q->running->done)
      uv_cond_wait(&q->ran, &q->lock);
    uv_mutex_unlock(&q->lock);
  }
  for (fs_op *op = q->head; op; op = op->next)
    if (!op->done) {
      run_op(op);
      op->done = 1;
    }
}

/* The host is closing: what was called still takes effect (a write asked
 * for before another task called os.exit is not lost): wait for the
 * operation in the pool, then run those queued behind it, in order, on the
 * loop's thread. Their tasks are not woken (the host is closing). The
 * operation that was in the pool frees itself and the queue when it comes
 * back, as the host closes its loop. */
static void queue_close(void *data) {
  fs_queue *q = data;
  queue_drain(q);
  q->closing = 1;
  q->ctx->fs_queue = NULL;
  fs_op *op = q->running ? q->running->next : q->head;
  while (op) {
    fs_op *next = op->next;
    task_waiter_cancel(&op->waiter);
    op_free(op);
    op = next;
  }
  if (q->running) {
    q->running->next = NULL;
    q->head = q->tail = q->running;
    task_waiter_cancel(&q->running->waiter);
  } else {
    queue_free(q);
  }
}

/* Without a queue (out of memory at the start) every call runs at once. */
static void queue_open(host_ctx *ctx) {
  fs_queue *q = calloc(1, sizeof *q);
  if (!q || uv_mutex_init(&q->lock) != 0) {
    free(q);
    return;
  }
  if (uv_cond_init(&q->ran) != 0) {
    uv_mutex_destroy(&q->lock);
    free(q);
    return;
  }
  q->ctx = ctx;
  ctx->fs_queue = q;
  host_on_close(ctx, queue_close, q);
}

/* ---- the Lua side ---- */

static fs_op *op_new(lua_State *L, op_kind kind) {
  fs_op *op = calloc(1, sizeof *op);
  if (!op)
    luaL_error(L, "host.fs: out of memory");
  op->kind = kind;
  op->waiter.ref = LUA_NOREF;
  return op;
}

/* A malloc'd copy of the string argument arg of op (op is freed and an
 * error raised when out of memory). */
static char *op_string(lua_State *L, fs_op *op, int arg, size_t *len) {
  size_t n;
  const char *s = lua_tolstring(L, arg, &n);
  char *copy = malloc(n + 1);
  if (!copy) {
    op_free(op);
    luaL_error(L, "host.fs: out of memory");
  }
  memcpy(copy, s, n + 1);
  if (len)
    *len = n;
  return copy;
}

/* Run op and return its results to the caller: queued when the caller is
 * a task that may wait, at once otherwise. Arguments are checked and copied
 * into op already. */
static int op_call(lua_State *L, fs_op *op) {
  fs_queue *q = host_get(L)->fs_queue;
  if (q && task_can_wait(L)) {
    op->q = q;
    if (q->tail)
      q->tail->next = op;
    else
      q->head = op;
    q->tail = op;
    if (!q->running)
      start_head(q);
    lua_settop(L, 0);
    return task_wait(L, &op->waiter);
  }
  queue_drain(q);
  run_op(op);
  int n = push_protected(L, op);
  op_free(op);
  if (n == -1)
    return lua_error(L);
  if (n < 0)
    return luaL_error(L, "host.fs: out of memory");
  return n;
}

/* Raise unless argument arg is a path: a string without a NUL byte (C
 * would cut the path at it: "keep\0.tmp" would name keep). */
static const char *check_path(lua_State *L, int arg) {
  size_t n;
  const char *s = luaL_checklstring(L, arg, &n);
  luaL_argcheck(L, strlen(s) == n, arg, "a path with a NUL byte in it");
  return s;
}

/* host.fs.read(path) -> string | nil, msg, code */
static int l_read(lua_State *L) {
  check_path(L, 1);
  fs_op *op = op_new(L, OP_READ);
  op->path = op_string(L, op, 1, NULL);
  return op_call(L, op);
}

/* host.fs.write_atomic(path, data [, {sync = false}]) -> true | nil, msg,
 * code */
static int l_write_atomic(lua_State *L) {
  check_path(L, 1);
  luaL_checkstring(L, 2);
  int sync = 1; /* opts.sync = false: no flush (a file that may be lost) */
  if (!lua_isnoneornil(L, 3)) {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_getfield(L, 3, "sync");
    luaL_argcheck(L, lua_isnil(L, -1) || lua_isboolean(L, -1), 3,
                  "sync must be a boolean");
    sync = lua_isnil(L, -1) || lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  fs_op *op = op_new(L, OP_WRITE_ATOMIC);
  op->sync = sync;
  op->path = op_string(L, op, 1, NULL);
  op->data = op_string(L, op, 2, &op->len);
  return op_call(L, op);
}

/* host.fs.append(path, data) -> true | nil, msg, code */
static int l_append(lua_State *L) {
  check_path(L, 1);
  luaL_checkstring(L, 2);
  fs_op *op = op_new(L, OP_APPEND);
  op->path = op_string(L, op, 1, NULL);
  op->data = op_string(L, op, 2, &op->len);
  return op_call(L, op);
}

/* One path argument, checked and copied. */
static int call_path(lua_State *L, op_kind kind) {
  check_path(L, 1);
  fs_op *op = op_new(L, kind);
  op->path = op_string(L, op, 1, NULL);
  return op_call(L, op);
}

/* Two path arguments. */
static int call_paths(lua_State *L, op_kind kind) {
  check_path(L, 1);
  check_path(L, 2);
  fs_op *op = op_new(L, kind);
  op->path = op_string(L, op, 1, NULL);
  op->path2 = op_string(L, op, 2, NULL);
  return op_call(L, op);
}

/* host.fs.sync(path) -> true | nil, msg, code: the file's data flushed to
 * the disk (for a file written by other means than write_atomic). */
static int l_sync(lua_State *L) {
  return call_path(L, OP_SYNC);
}

/* host.fs.copy_truncate(path, copy) -> bytes | nil, msg, code: copy the
 * file at path to `copy` (replacing it), then empty path. Made for a log
 * that a running process appends to (opened with O_APPEND, as host.proc
 * opens stdout files): its next write starts the emptied file. Lines
 * written between the copy and the truncation are lost. */
static int l_copy_truncate(lua_State *L) {
  return call_paths(L, OP_COPY_TRUNCATE);
}

/* host.fs.space(path) -> {free = bytes, total = bytes} | nil, msg, code:
 * the space of the file system holding path (free: what an unprivileged
 * user may still use). */
static int l_space(lua_State *L) {
  return call_path(L, OP_SPACE);
}

/* host.fs.mkdir_p(path) -> true | nil, msg, code */
static int l_mkdir_p(lua_State *L) {
  luaL_argcheck(L, *check_path(L, 1) != '\0', 1, "empty path");
  return call_path(L, OP_MKDIR_P);
}

/* host.fs.exists(path) -> boolean (links followed) */
static int l_exists(lua_State *L) {
  return call_path(L, OP_EXISTS);
}

/* host.fs.stat(path) -> {type, size, mtime} | nil, msg, code */
static int l_stat(lua_State *L) {
  return call_path(L, OP_STAT);
}

/* host.fs.remove(path) -> true | nil, msg, code */
static int l_remove(lua_State *L) {
  return call_path(L, OP_REMOVE);
}

/* host.fs.rename(from, to) -> true | nil, msg, code. Replaces `to` when it
 * is a file (on Windows too); a link `from` is moved, not its target. */
static int l_rename(lua_State *L) {
  return call_paths(L, OP_RENAME);
}

/* host.fs.list(path) -> sorted array of names | nil, msg, code */
static int l_list(lua_State *L) {
  return call_path(L, OP_LIST);
}

/* host.fs.join(a, b, ...): one separator between parts. On Windows it is
 * a backslash, and every '/' of the result becomes one too (a path an
 * operator wrote with '/' in a setting), so that a path the agent builds
 * or logs has one separator; elsewhere '/', and the parts are kept as
 * they are. */
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
      luaL_addchar(&b, PLAT_PATH_SEP);
    if (i > 1 && last_sep && is_sep(part[0]) && luaL_bufflen(&b) > 0) {
      part++;
      len--;
    }
    for (size_t k = 0; k < len; k++) /* (the same on POSIX) */
      luaL_addchar(&b, part[k] == '/' ? PLAT_PATH_SEP : part[k]);
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
  const char *path = check_path(L, 1);
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
  queue_open(host_get(L));
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
