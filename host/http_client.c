/* http_client.c: host.http.request, libcurl's multi interface on the loop.
 *
 * One curl multi handle per host is created on the first request. Its
 * sockets are watched with uv_poll_t handles and its single timeout with a
 * uv_timer_t; whenever one fires, curl_multi_socket_action() runs and
 * finished transfers are collected with curl_multi_info_read(). Every uv
 * handle is malloc'd on its own and freed in its close callback, since the
 * Lua state may be gone before libuv has finished closing it.
 *
 * What lasts from one request to the next, so that an idle agent costs
 * little per request:
 * - a few easy handles, reset (curl_easy_reset) rather than freed;
 * - a few header lists, found again by their text;
 * - connections (the multi handle's cache), and their sockets' uv_poll_t:
 *   the sockets of connections are opened and closed here
 *   (CURLOPT_OPENSOCKETFUNCTION, CLOSESOCKETFUNCTION, close-on-exec), so a
 *   socket's poll handle is kept while curl keeps the connection between
 *   transfers and closed just before the socket is;
 * - TLS sessions and DNS answers (a share handle), so that a new
 *   connection to the dashboard resumes its TLS session;
 * - the parsed CA store (libcurl's CA cache): it works only without a CA
 *   directory, so the CA directory is left out whenever a CA file is used
 *   (the one given, or libcurl's default bundle when it can be read).
 */
#include "fs.h"
#include "host.h"
#include "log.h"
#include "platform.h"
#include "task.h"

#include <curl/curl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define WHAT "host.http.request"
#define DEFAULT_MAX_SIZE (16.0 * 1024 * 1024)
#define MAX_REDIRS 5L
#define HEADERS_MAX (1024 * 1024) /* all response headers together */
#define BODY_MIN_CAP 2048
#define SPARE_MAX 4   /* easy handles kept for the next transfers */
#define HEADER_SETS 4 /* header lists kept for the next transfers */
/* request headers whose text is longer get a list of their own */
#define HEADERS_TEXT_MAX 2048

typedef struct sock_ctx sock_ctx;
typedef struct http_req http_req;

typedef struct http_multi {
  host_ctx *ctx;
  CURLM *multi;
  CURLSH *share;
  uv_timer_t *timer;
  uv_prepare_t *kick;     /* curl's "time out now": before the loop polls */
  int kicking;            /* in kick's callback */
  CURL *spare[SPARE_MAX]; /* easy handles of finished transfers, reset */
  int nspare;
  struct {      /* header lists made before, by their text */
    char *text; /* "line\nline\n...": what the list holds */
    struct curl_slist *list;
  } sets[HEADER_SETS];
  int nsets;
  http_req *reqs;        /* transfers in flight */
  sock_ctx *socks;       /* sockets being watched */
  int default_ca_usable; /* libcurl's default CA file can be read */
} http_multi;

struct sock_ctx {
  uv_poll_t poll; /* first: the close callback frees the whole struct */
  curl_socket_t fd;
  http_multi *m;
  int own;    /* opened here (a connection's): closed by on_close_socket */
  int idle;   /* curl is not watching it (a kept connection) */
  int events; /* what the poll handle watches, 0 when stopped */
  sock_ctx *prev, *next;
};

typedef struct buf {
  char *data;
  size_t len, cap;
} buf;

struct http_req {
  http_multi *m;
  CURL *easy;
  struct curl_slist *headers;
  int headers_shared; /* headers belong to m->sets */
  task_waiter waiter;
  buf body;
  buf hdrs; /* lower-case name '\0' value '\0', for the last response */
  size_t max_size, received;
  uv_file out_fd; /* -1 without an output file */
  char *out_path;
  int out_err;              /* libuv error writing the output file */
  uv_file in_fd;            /* the body file (body_file), or -1 */
  uint64_t in_size, in_off; /* its size; where the next read starts */
  int in_err;               /* libuv error reading it */
  int too_large, headers_too_large, oom;
  char errbuf[CURL_ERROR_SIZE];
  http_req *prev, *next;
};

/* The options of a request, read and checked before anything is allocated.
 * The strings belong to the options table, which stays on the stack. */
typedef struct req_opts {
  const char *url, *method, *body, *body_file, *output, *cainfo;
  size_t body_len;
  double timeout, connect_timeout, max_size;
  int follow, has_expect, compressed;
} req_opts;

static http_multi *the_multi;

/* ---- small helpers ---- */

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int has_prefix_nocase(const char *s, const char *prefix) {
  for (; *prefix; s++, prefix++)
    if (lower((unsigned char)*s) != *prefix)
      return 0;
  return 1;
}

static int buf_reserve(buf *b, size_t extra, size_t limit) {
  if (extra > SIZE_MAX - b->len)
    return 0;
  size_t need = b->len + extra;
  if (need <= b->cap)
    return 1;
  size_t cap = b->cap ? b->cap : BODY_MIN_CAP;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  if (cap > limit && limit >= need)
    cap = limit;
  char *p = realloc(b->data, cap);
  if (!p)
    return 0;
  b->data = p;
  b->cap = cap;
  return 1;
}

static int buf_append(buf *b, const char *data, size_t len, size_t limit) {
  if (!buf_reserve(b, len, limit))
    return 0;
  if (len)
    memcpy(b->data + b->len, data, len);
  b->len += len;
  return 1;
}

static void buf_free(buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- the output file ---- */

/* Never through a link planted at path: the host may run as root and
 * download into a folder that others can write (UV_FS_O_NOFOLLOW is 0 on
 * Windows, where making a link needs a privilege). Only into a regular
 * file: O_NONBLOCK, so that a FIFO with no reader cannot hold the loop at
 * the open, then fstat; anything else is refused with UV_EFTYPE (and left
 * where it is). */
static int out_open(uv_loop_t *loop, const char *path, uv_file *fd) {
  uv_fs_t fs;
  int rc = uv_fs_open(loop, &fs, path,
                      UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_TRUNC |
                          UV_FS_O_NOFOLLOW | UV_FS_O_NONBLOCK,
                      0644, NULL);
  uv_fs_req_cleanup(&fs);
  if (rc == UV_ENXIO) { /* a FIFO with no reader, or a socket */
    int st = uv_fs_stat(loop, &fs, path, NULL);
    if (st == 0 && (fs.statbuf.st_mode & S_IFMT) != S_IFREG)
      rc = UV_EFTYPE;
    uv_fs_req_cleanup(&fs);
  }
  if (rc < 0)
    return rc;
  uv_file f = rc;
  rc = uv_fs_fstat(loop, &fs, f, NULL);
  if (rc == 0 && (fs.statbuf.st_mode & S_IFMT) != S_IFREG)
    rc = UV_EFTYPE;
  uv_fs_req_cleanup(&fs);
  if (rc < 0) {
    uv_fs_close(loop, &fs, f, NULL);
    uv_fs_req_cleanup(&fs);
    return rc;
  }
  *fd = f;
  return 0;
}

static int out_write(http_req *req, const char *data, size_t len) {
  return host_fs_write_all(req->out_fd, data, len);
}

/* Close the output file; remove it when the transfer failed. Returns the
 * error of closing it (0 when fine). */
static int out_finish(http_req *req, int failed) {
  if (req->out_fd < 0)
    return 0;
  uv_loop_t *loop = &req->m->ctx->loop;
  uv_fs_t fs;
  int rc = uv_fs_close(loop, &fs, req->out_fd, NULL);
  uv_fs_req_cleanup(&fs);
  req->out_fd = -1;
  if (failed || rc < 0) {
    uv_fs_unlink(loop, &fs, req->out_path, NULL);
    uv_fs_req_cleanup(&fs);
  }
  return rc < 0 ? rc : 0;
}

/* ---- the body file ---- */

/* Open the body file and take its size; 0 or a libuv error. */
static int in_open(http_req *req, const char *path) {
  uv_fs_t fs;
  /* O_NONBLOCK: a FIFO cannot hold the loop at the open (then refused) */
  int rc =
      uv_fs_open(NULL, &fs, path, UV_FS_O_RDONLY | UV_FS_O_NONBLOCK, 0, NULL);
  uv_fs_req_cleanup(&fs);
  if (rc < 0)
    return rc;
  req->in_fd = rc;
  rc = uv_fs_fstat(NULL, &fs, req->in_fd, NULL);
  uint64_t type = rc == 0 ? fs.statbuf.st_mode & S_IFMT : 0;
  if (rc == 0 && type != S_IFREG)
    rc = type == S_IFDIR ? UV_EISDIR : UV_EINVAL;
  if (rc == 0)
    req->in_size = fs.statbuf.st_size;
  uv_fs_req_cleanup(&fs);
  return rc; /* on an error req_free closes the file */
}

static void in_close(http_req *req) {
  if (req->in_fd < 0)
    return;
  uv_fs_t fs;
  uv_fs_close(NULL, &fs, req->in_fd, NULL);
  uv_fs_req_cleanup(&fs);
  req->in_fd = -1;
}

/* CURLOPT_READFUNCTION: the next bytes of the body file, up to the size
 * announced (a file that grew meanwhile is cut there). */
static size_t on_upload(char *out, size_t size, size_t n, void *ud) {
  http_req *req = ud;
  size_t room = size * n;
  uint64_t left = req->in_size - req->in_off;
  if (room > left)
    room = (size_t)left;
  if (room > UINT_MAX)
    room = UINT_MAX;
  if (room == 0)
    return 0;
  uv_buf_t b = uv_buf_init(out, (unsigned)room);
  uv_fs_t fs;
  int rc = uv_fs_read(NULL, &fs, req->in_fd, &b, 1, (int64_t)req->in_off, NULL);
  uv_fs_req_cleanup(&fs);
  if (rc <= 0) {
    req->in_err = rc < 0 ? rc : UV_EOF; /* EOF: it got shorter */
    return CURL_READFUNC_ABORT;
  }
  req->in_off += (uint64_t)rc;
  return (size_t)rc;
}

/* CURLOPT_SEEKFUNCTION: curl sends the body again (a redirect that keeps
 * it, a kept connection that turned out closed). */
static int on_seek(void *ud, curl_off_t offset, int origin) {
  http_req *req = ud;
  if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > req->in_size)
    return CURL_SEEKFUNC_CANTSEEK;
  req->in_off = (uint64_t)offset;
  return CURL_SEEKFUNC_OK;
}

/* ---- requests ---- */

static void req_link(http_multi *m, http_req *req) {
  req->prev = NULL;
  req->next = m->reqs;
  if (m->reqs)
    m->reqs->prev = req;
  m->reqs = req;
  uv_ref((uv_handle_t *)m->timer);
}

static void req_unlink(http_multi *m, http_req *req) {
  if (req->prev)
    req->prev->next = req->next;
  else
    m->reqs = req->next;
  if (req->next)
    req->next->prev = req->prev;
  req->prev = req->next = NULL;
  /* curl may keep a timer for idle connections: that alone must not keep
   * the host alive */
  if (!m->reqs)
    uv_unref((uv_handle_t *)m->timer);
}

/* Free everything a request holds (the easy handle is no longer in the
 * multi handle). */
static void req_free(http_req *req) {
  http_multi *m = req->m;
  if (req->easy && m->nspare < SPARE_MAX) {
    curl_easy_reset(req->easy);
    m->spare[m->nspare++] = req->easy;
  } else if (req->easy) {
    curl_easy_cleanup(req->easy);
  }
  if (!req->headers_shared)
    curl_slist_free_all(req->headers);
  buf_free(&req->body);
  buf_free(&req->hdrs);
  free(req->out_path);
  in_close(req);
  task_waiter_cancel(&req->waiter);
  free(req);
}

/* ---- results ---- */

static const char *code_of(CURLcode rc) {
  switch (rc) {
  case CURLE_OPERATION_TIMEDOUT:
    return "timeout";
  case CURLE_COULDNT_CONNECT:
    return "connect";
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
    return "resolve";
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_CLIENTCERT:
  case CURLE_USE_SSL_FAILED:
    return "tls";
  case CURLE_UNSUPPORTED_PROTOCOL:
    return "protocol";
  case CURLE_FILESIZE_EXCEEDED:
    return "too_large";
  default:
    return "transfer";
  }
}

/* Push nil, message, code on co for a failed transfer; returns 3. */
static int push_failure(lua_State *co, http_req *req, CURLcode rc) {
  if (req->too_large || rc == CURLE_FILESIZE_EXCEEDED)
    return host_fail(co, "too_large", "response body larger than %zu bytes",
                     req->max_size);
  if (req->headers_too_large)
    return host_fail(co, "too_large", "response headers larger than %d bytes",
                     HEADERS_MAX);
  if (req->out_err)
    return host_fail(co, "io", "cannot write the output file: %s",
                     uv_strerror(req->out_err));
  if (req->in_err)
    return host_fail(co, "io", "cannot read the body file: %s",
                     uv_strerror(req->in_err));
  if (req->oom)
    return host_fail(co, "transfer", "out of memory");
  const char *what = curl_easy_strerror(rc);
  if (req->errbuf[0] && strcmp(req->errbuf, what) != 0)
    return host_fail(co, code_of(rc), "%s: %s", what, req->errbuf);
  return host_fail(co, code_of(rc), "%s", what);
}

/* Replace the array of strings at the top of co by its items joined with
 * ", " (one pass: a header repeated many times costs linear time). */
static void join_values(lua_State *co) {
  int list = lua_gettop(co);
  lua_Integer n = luaL_len(co, list);
  luaL_Buffer b;
  luaL_buffinit(co, &b);
  for (lua_Integer i = 1; i <= n; i++) {
    if (i > 1)
      luaL_addstring(&b, ", ");
    lua_rawgeti(co, list, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  lua_replace(co, list);
}

/* Push {name = value}: names lower-case, repeated headers joined. A name
 * seen once (the usual case) costs one string; the values of a repeated
 * one are gathered in an array first, then joined once. */
static void push_headers(lua_State *co, const buf *hdrs) {
  size_t nuls = 0; /* two per header */
  for (size_t i = 0; i < hdrs->len; i++)
    nuls += hdrs->data[i] == '\0';
  lua_createtable(co, 0, nuls / 2 > INT_MAX ? INT_MAX : (int)(nuls / 2));
  int out = lua_gettop(co);
  int lists = 0; /* name -> array of its values, made at the first repeat */
  size_t pos = 0;
  while (pos < hdrs->len) {
    const char *name = hdrs->data + pos;
    const char *value = name + strlen(name) + 1;
    pos = (size_t)(value - hdrs->data) + strlen(value) + 1;
    if (lua_getfield(co, out, name) == LUA_TNIL) {
      lua_pop(co, 1);
      lua_pushstring(co, value);
      lua_setfield(co, out, name);
      continue;
    }
    lua_pop(co, 1);
    if (!lists) {
      lua_newtable(co);
      lists = lua_gettop(co);
    }
    if (lua_getfield(co, lists, name) != LUA_TTABLE) {
      lua_pop(co, 1);
      lua_createtable(co, 4, 0);
      lua_getfield(co, out, name); /* the first value */
      lua_rawseti(co, -2, 1);
      lua_pushvalue(co, -1);
      lua_setfield(co, lists, name);
    }
    lua_pushstring(co, value);
    lua_rawseti(co, -2, luaL_len(co, -2) + 1);
    lua_pop(co, 1);
  }
  if (lists) {
    lua_pushnil(co);
    while (lua_next(co, lists)) {
      join_values(co);
      lua_pushvalue(co, -2);
      lua_insert(co, -2);
      lua_rawset(co, out);
    }
    lua_remove(co, lists);
  }
}

/* Push the response table on co; returns 1. */
static int push_response(lua_State *co, http_req *req) {
  long status = 0;
  if (curl_easy_getinfo(req->easy, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
    status = 0;
  lua_createtable(co, 0, 3);
  lua_pushinteger(co, status);
  lua_setfield(co, -2, "status");
  push_headers(co, &req->hdrs);
  lua_setfield(co, -2, "headers");
  if (req->out_path == NULL) {
    lua_pushlstring(co, req->body.data ? req->body.data : "", req->body.len);
    lua_setfield(co, -2, "body");
  }
  return 1;
}

/* A transfer ended with rc: report it to the waiting task, free it all. */
static void complete(http_req *req, CURLcode rc) {
  int failed = rc != CURLE_OK || req->too_large || req->out_err || req->oom;
  int close_err = out_finish(req, failed);
  if (!failed && close_err < 0) {
    req->out_err = close_err;
    failed = 1;
    rc = CURLE_WRITE_ERROR;
  }
  lua_State *co = task_waiter_thread(&req->waiter);
  if (co && lua_checkstack(co, 8)) {
    int n = failed ? push_failure(co, req, rc) : push_response(co, req);
    task_waiter_wake(&req->waiter, n);
  } else {
    task_waiter_cancel(&req->waiter);
  }
  req_free(req);
}

static void check_done(http_multi *m) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(m->multi, &pending))) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    CURL *easy = msg->easy_handle;
    CURLcode rc = msg->data.result;
    http_req *req = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&req);
    curl_multi_remove_handle(m->multi, easy);
    if (req) {
      req_unlink(m, req);
      complete(req, rc);
    }
  }
}

/* ---- curl callbacks ---- */

static size_t on_body(char *data, size_t size, size_t n, void *ud) {
  http_req *req = ud;
  size_t len = size * n;
  if (len > req->max_size - req->received) {
    req->too_large = 1;
    return 0; /* aborts the transfer */
  }
  req->received += len;
  if (req->out_fd >= 0) {
    req->out_err = out_write(req, data, len);
    return req->out_err ? 0 : len;
  }
  if (!buf_append(&req->body, data, len, req->max_size)) {
    req->oom = 1;
    return 0;
  }
  return len;
}

static int is_space(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Append "name\0value\0" (name lower-cased, value trimmed). */
static int store_header(http_req *req, const char *line, size_t len) {
  const char *colon = memchr(line, ':', len);
  if (!colon || colon == line || is_space(line[0]))
    return 1; /* not a header, or an obsolete folded line: ignore */
  const char *v = colon + 1, *end = line + len;
  while (v < end && is_space(*v))
    v++;
  while (end > v && is_space(end[-1]))
    end--;
  size_t nlen = (size_t)(colon - line), vlen = (size_t)(end - v);
  while (nlen > 0 && is_space(line[nlen - 1]))
    nlen--; /* "Retry-After : 5" */
  buf *b = &req->hdrs;
  if (b->len + nlen + vlen + 2 > HEADERS_MAX ||
      !buf_reserve(b, nlen + vlen + 2, HEADERS_MAX))
    return 0;
  for (size_t i = 0; i < nlen; i++)
    b->data[b->len++] = (char)lower((unsigned char)line[i]);
  b->data[b->len++] = '\0';
  buf_append(b, v, vlen, HEADERS_MAX);
  b->data[b->len++] = '\0';
  return 1;
}

static size_t on_header(char *data, size_t size, size_t n, void *ud) {
  http_req *req = ud;
  size_t len = size * n;
  if (len >= 5 && memcmp(data, "HTTP/", 5) == 0) {
    req->hdrs.len = 0; /* a new response (redirect, 100 Continue) */
    return len;
  }
  if (!store_header(req, data, len)) {
    req->headers_too_large = 1;
    return 0;
  }
  return len;
}

/* ---- the loop side ---- */

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void on_poll(uv_poll_t *poll, int status, int events) {
  sock_ctx *sc = poll->data;
  http_multi *m = sc->m;
  if (sc->idle) {
    /* a kept connection that the server closed (or wrote to): curl finds
     * out when it next wants the connection; until then, stop watching */
    uv_poll_stop(&sc->poll);
    sc->events = 0;
    return;
  }
  int flags = 0;
  if (status < 0)
    flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE)
    flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE)
    flags |= CURL_CSELECT_OUT;
  int running;
  curl_multi_socket_action(m->multi, sc->fd, flags, &running);
  check_done(m);
}

static void on_timer(uv_timer_t *timer) {
  http_multi *m = timer->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
}

/* curl's timeout of 0 ms, which it asks for as soon as a transfer is
 * added: run in the loop's prepare phase, right after the task that made
 * the request has yielded, rather than by a timer, which would cost the
 * loop one more turn (a poll of the sockets that cannot wait). */
static void on_kick(uv_prepare_t *kick) {
  http_multi *m = kick->data;
  uv_prepare_stop(kick);
  m->kicking = 1;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
  /* a transfer done already (a fast server): its task goes on now, not
   * after one more turn of the loop */
  task_run_ready(m->ctx);
  m->kicking = 0;
}

static int on_curl_timer(CURLM *multi, long timeout_ms, void *ud) {
  (void)multi;
  http_multi *m = ud;
  uv_prepare_stop(m->kick);
  if (timeout_ms < 0) {
    uv_timer_stop(m->timer);
  } else if (timeout_ms == 0 && !m->kicking) {
    /* (from kick's own callback, the prepare phase has passed: a timer) */
    uv_timer_stop(m->timer);
    uv_prepare_start(m->kick, on_kick);
  } else {
    uv_timer_start(m->timer, on_timer, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

static void sock_close(http_multi *m, sock_ctx *sc) {
  if (sc->prev)
    sc->prev->next = sc->next;
  else
    m->socks = sc->next;
  if (sc->next)
    sc->next->prev = sc->prev;
  uv_poll_stop(&sc->poll);
  uv_close((uv_handle_t *)&sc->poll, free_handle);
}

static sock_ctx *sock_find(http_multi *m, curl_socket_t s) {
  for (sock_ctx *sc = m->socks; sc; sc = sc->next)
    if (sc->fd == s)
      return sc;
  return NULL;
}

static sock_ctx *sock_open(http_multi *m, curl_socket_t s, int own) {
  sock_ctx *sc = calloc(1, sizeof *sc);
  if (!sc)
    return NULL;
  int rc = uv_poll_init_socket(&m->ctx->loop, &sc->poll, s);
  if (rc != 0) {
    host_log(LOG_ERROR, WHAT ": cannot watch a socket: %s", uv_strerror(rc));
    free(sc);
    return NULL;
  }
  sc->poll.data = sc;
  sc->fd = s;
  sc->m = m;
  sc->own = own;
  sc->prev = NULL;
  sc->next = m->socks;
  if (m->socks)
    m->socks->prev = sc;
  m->socks = sc;
  return sc;
}

static int on_curl_socket(CURL *easy, curl_socket_t s, int what, void *ud,
                          void *sockp) {
  (void)easy;
  http_multi *m = ud;
  sock_ctx *sc = sockp;
  if (what == CURL_POLL_REMOVE) {
    if (sc) {
      curl_multi_assign(m->multi, s, NULL);
      if (sc->own) {
        /* a kept connection: its poll handle stays, and does not keep
         * the host running by itself */
        sc->idle = 1;
        uv_unref((uv_handle_t *)&sc->poll);
      } else
        sock_close(m, sc); /* curl's own (the resolver's), closed by curl */
    }
    return 0;
  }
  if (!sc) {
    sc = sock_find(m, s); /* a kept connection's, again in use */
    if (!sc && !(sc = sock_open(m, s, 0)))
      return -1;
    curl_multi_assign(m->multi, s, sc);
  }
  if (sc->idle) {
    sc->idle = 0;
    uv_ref((uv_handle_t *)&sc->poll);
  }
  int events = 0;
  if (what & CURL_POLL_IN)
    events |= UV_READABLE;
  if (what & CURL_POLL_OUT)
    events |= UV_WRITABLE;
  if (events == sc->events)
    return 0; /* already so: no system call */
  sc->events = events;
  return uv_poll_start(&sc->poll, events, on_poll) == 0 ? 0 : -1;
}

/* CURLOPT_OPENSOCKETFUNCTION: a connection's socket, close-on-exec. */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose,
                                    struct curl_sockaddr *addr) {
  http_multi *m = ud;
  if (purpose != CURLSOCKTYPE_IPCXN)
    return CURL_SOCKET_BAD;
  curl_socket_t s =
      plat_open_socket(addr->family, addr->socktype, addr->protocol);
  if (s == CURL_SOCKET_BAD)
    return s;
  if (!sock_open(m, s, 1)) {
    plat_close_socket(s);
    return CURL_SOCKET_BAD;
  }
  return s;
}

/* CURLOPT_CLOSESOCKETFUNCTION: its poll handle first, then the socket (its
 * number may be reused at once). */
static int on_close_socket(void *ud, curl_socket_t s) {
  http_multi *m = ud;
  sock_ctx *sc = sock_find(m, s);
  if (sc)
    sock_close(m, sc);
  plat_close_socket(s);
  return 0;
}

/* ---- the multi handle ---- */

/* At shutdown: drop every transfer (without touching Lua), then curl. */
static void multi_close(void *data) {
  http_multi *m = data;
  while (m->reqs) {
    http_req *req = m->reqs;
    curl_multi_remove_handle(m->multi, req->easy);
    req_unlink(m, req);
    out_finish(req, 1);
    req_free(req);
  }
  while (m->nspare > 0)
    curl_easy_cleanup(m->spare[--m->nspare]);
  while (m->nsets > 0) {
    m->nsets--;
    curl_slist_free_all(m->sets[m->nsets].list);
    free(m->sets[m->nsets].text);
  }
  curl_multi_cleanup(m->multi); /* closes the connections */
  curl_share_cleanup(m->share);
  while (m->socks)
    sock_close(m, m->socks);
  uv_timer_stop(m->timer);
  uv_close((uv_handle_t *)m->timer, free_handle);
  uv_prepare_stop(m->kick);
  uv_close((uv_handle_t *)m->kick, free_handle);
  if (the_multi == m)
    the_multi = NULL;
  free(m);
}

/* TLS sessions and DNS answers, shared by every transfer (one thread: no
 * lock functions). */
static CURLSH *share_new(void) {
  CURLSH *sh = curl_share_init();
  if (sh && (curl_share_setopt(sh, CURLSHOPT_SHARE,
                               CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK ||
             curl_share_setopt(sh, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) !=
                 CURLSHE_OK)) {
    curl_share_cleanup(sh);
    sh = NULL;
  }
  return sh;
}

/* Whether libcurl's default CA file exists: then the CA directory can be
 * left out, which turns libcurl's CA cache on. */
static int default_ca_usable(void) {
  int usable = 0;
  CURL *e = curl_easy_init();
  char *path = NULL;
  if (e && curl_easy_getinfo(e, CURLINFO_CAINFO, &path) == CURLE_OK && path) {
    uv_fs_t req;
    usable = uv_fs_stat(NULL, &req, path, NULL) == 0 &&
             (req.statbuf.st_mode & S_IFMT) == S_IFREG;
    uv_fs_req_cleanup(&req);
  }
  if (e)
    curl_easy_cleanup(e);
  return usable;
}

static CURLMcode multi_setup(http_multi *m) {
  CURLMcode rc =
      curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
  if (rc == CURLM_OK)
    rc = curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  if (rc == CURLM_OK)
    rc = curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  if (rc == CURLM_OK)
    rc = curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  return rc;
}

/* The host's multi handle, created on first use; NULL when out of
 * resources. */
static http_multi *get_multi(host_ctx *ctx) {
  if (the_multi)
    return the_multi;
  http_multi *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  m->ctx = ctx;
  m->timer = malloc(sizeof *m->timer);
  m->kick = malloc(sizeof *m->kick);
  m->multi = curl_multi_init();
  m->share = share_new();
  if (!m->timer || !m->kick || !m->multi || !m->share ||
      multi_setup(m) != CURLM_OK) {
    if (m->multi)
      curl_multi_cleanup(m->multi);
    if (m->share)
      curl_share_cleanup(m->share);
    free(m->timer);
    free(m->kick);
    free(m);
    return NULL;
  }
  m->default_ca_usable = default_ca_usable();
  uv_timer_init(&ctx->loop, m->timer);
  m->timer->data = m;
  uv_unref((uv_handle_t *)m->timer);
  uv_prepare_init(&ctx->loop, m->kick); /* active only while a kick waits */
  m->kick->data = m;
  host_on_close(ctx, multi_close, m);
  the_multi = m;
  return m;
}

/* ---- reading the options ---- */

static void check_token(lua_State *L, const char *s, const char *what) {
  if (!*s)
    luaL_error(L, WHAT ": %s must not be empty", what);
  for (; *s; s++)
    if ((unsigned char)*s <= ' ' || *s == ':' || *s == 0x7f)
      luaL_error(L, WHAT ": %s contains an invalid character", what);
}

static void check_header_value(lua_State *L, const char *name, const char *v) {
  for (; *v; v++)
    if (*v == '\r' || *v == '\n')
      luaL_error(L, WHAT ": header '%s' contains a line break", name);
}

/* Check the headers table at idx (may be nil); sets o->has_expect. */
static void check_headers(lua_State *L, int idx, req_opts *o) {
  if (lua_isnil(L, idx))
    return;
  if (!lua_istable(L, idx))
    luaL_error(L, "option 'headers' must be a table, got %s",
               luaL_typename(L, idx));
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int vt = lua_type(L, -1);
    if (lua_type(L, -2) != LUA_TSTRING ||
        (vt != LUA_TSTRING && vt != LUA_TNUMBER))
      luaL_error(L, WHAT ": option 'headers' must map names to strings");
    size_t nlen, vlen = 0;
    const char *name = lua_tolstring(L, -2, &nlen);
    check_token(L, name, "a header name");
    const char *value = vt == LUA_TSTRING ? lua_tolstring(L, -1, &vlen) : "";
    if (strlen(name) != nlen || strlen(value) != vlen)
      luaL_error(L, WHAT ": header '%s' contains a zero byte", name);
    check_header_value(L, name, value);
    if (has_prefix_nocase(name, "expect") && name[6] == '\0')
      o->has_expect = 1;
    lua_pop(L, 1);
  }
}

static void check_url(lua_State *L, const char *url) {
  if (!url)
    luaL_error(L, WHAT ": option 'url' is required");
  if (!has_prefix_nocase(url, "http://") && !has_prefix_nocase(url, "https://"))
    luaL_error(L, WHAT ": only http and https URLs are allowed");
}

static double check_seconds(lua_State *L, const char *field, double def) {
  double v = host_opt_number(L, 1, field, def);
  if (!(v > 0 && v < 1e9))
    luaL_error(L, WHAT ": option '%s' must be a number of seconds > 0", field);
  return v;
}

/* Read and check every option of the table at index 1; raises on misuse.
 * Leaves the headers table at index 2. */
static void read_opts(lua_State *L, req_opts *o) {
  memset(o, 0, sizeof *o);
  o->url = host_opt_string(L, 1, "url", NULL);
  check_url(L, o->url);
  o->method = host_opt_string(L, 1, "method", NULL);
  if (o->method)
    check_token(L, o->method, "option 'method'");
  if (host_opt_string(L, 1, "body", NULL)) {
    lua_getfield(L, 1, "body");
    o->body = lua_tolstring(L, -1, &o->body_len);
    lua_pop(L, 1); /* still referenced by the options table */
  }
  o->body_file = host_opt_string(L, 1, "body_file", NULL);
  if (o->body && o->body_file)
    luaL_error(L, WHAT ": options 'body' and 'body_file' exclude each other");
  o->output = host_opt_string(L, 1, "output", NULL);
  o->cainfo = host_opt_string(L, 1, "cainfo", NULL);
  o->timeout = check_seconds(L, "timeout", 30);
  o->connect_timeout = check_seconds(L, "connect_timeout", 10);
  o->max_size = host_opt_number(L, 1, "max_size", DEFAULT_MAX_SIZE);
  if (!(o->max_size >= 0 && o->max_size <= 9007199254740992.0))
    luaL_error(L, WHAT ": option 'max_size' must be a number of bytes >= 0");
  o->follow = host_opt_boolean(L, 1, "follow_redirects", 0);
  o->compressed = host_opt_boolean(L, 1, "compressed", 0);
  lua_settop(L, 1);
  lua_getfield(L, 1, "headers");
  check_headers(L, 2, o);
}

/* ---- building the transfer ---- */

static int make_headers(lua_State *L, int idx, const req_opts *o,
                        http_req *req);

/* Append n bytes to the text being built in out (cap bytes, one kept for
 * the NUL); 0 when they do not fit. */
static int text_put(char *out, size_t cap, size_t *len, const char *s,
                    size_t n) {
  if (n >= cap - *len)
    return 0;
  memcpy(out + *len, s, n);
  *len += n;
  out[*len] = '\0';
  return 1;
}

/* The text of the header list that make_headers would make ("Name: value\n"
 * lines), written to out (cap bytes, NUL-terminated): its length, or 0 when
 * it does not fit (no Lua strings: this runs with every request). */
static size_t headers_text(lua_State *L, int idx, const req_opts *o, char *out,
                           size_t cap) {
  size_t len = 0;
  out[0] = '\0';
  if (!o->has_expect && !text_put(out, cap, &len, "Expect:\n", 8))
    return 0;
  if (lua_isnil(L, idx))
    return len;
  int fits = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, -2, &nlen); /* a string: checked */
    const char *value =
        lua_tolstring(L, -1, &vlen); /* the value: may convert */
    fits = fits && text_put(out, cap, &len, name, nlen) &&
           text_put(out, cap, &len, ": ", 2) &&
           text_put(out, cap, &len, value, vlen) &&
           text_put(out, cap, &len, "\n", 1);
    lua_pop(L, 1);
  }
  return fits ? len : 0;
}

/* The request's header list: one made before for the same text, else a new
 * one, kept for the next requests while there is room. 0 when out of
 * memory. */
static int build_headers(lua_State *L, int idx, const req_opts *o,
                         http_req *req) {
  http_multi *m = req->m;
  char text[HEADERS_TEXT_MAX];
  size_t len = headers_text(L, idx, o, text, sizeof text);
  if (len == 0)
    return make_headers(L, idx, o, req); /* too long to be kept */
  for (int i = 0; i < m->nsets; i++)
    if (strlen(m->sets[i].text) == len &&
        memcmp(m->sets[i].text, text, len) == 0) {
      req->headers = m->sets[i].list;
      req->headers_shared = 1;
      return 1;
    }
  int ok = make_headers(L, idx, o, req);
  if (ok && m->nsets < HEADER_SETS) {
    char *copy = malloc(len + 1);
    if (copy) {
      memcpy(copy, text, len + 1);
      m->sets[m->nsets].text = copy;
      m->sets[m->nsets].list = req->headers;
      m->nsets++;
      req->headers_shared = 1;
    }
  }
  return ok;
}

static long to_ms(double s) {
  double ms = s * 1000.0 + 0.5;
  return ms >= (double)LONG_MAX ? LONG_MAX : (long)ms;
}

/* Append "name: value" to req->headers; 0 when out of memory. */
static int add_header_line(http_req *req, const char *name, size_t nlen,
                           const char *value, size_t vlen) {
  size_t n = nlen + vlen + 3;
  char *line = malloc(n);
  if (!line)
    return 0;
  /* "Name;" sends an empty value; "Name:" would remove the header */
  if (vlen)
    snprintf(line, n, "%s: %s", name, value);
  else
    snprintf(line, n, "%s;", name);
  struct curl_slist *list = curl_slist_append(req->headers, line);
  free(line);
  if (!list)
    return 0;
  req->headers = list;
  return 1;
}

/* The curl list of the request headers (table at idx, already checked);
 * 0 when out of memory. */
static int make_headers(lua_State *L, int idx, const req_opts *o,
                        http_req *req) {
  /* "Expect:" removes the header: no 1 s wait for "100 Continue" */
  if (!o->has_expect) {
    struct curl_slist *list = curl_slist_append(req->headers, "Expect:");
    if (!list)
      return 0;
    req->headers = list;
  }
  if (lua_isnil(L, idx))
    return 1;
  int ok = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    const char *value = lua_tolstring(L, -1, &vlen);
    if (ok)
      ok = add_header_line(req, name, nlen, value, vlen);
    lua_pop(L, 1);
  }
  return ok;
}

#define SET(opt, val)                                                          \
  do {                                                                         \
    CURLcode rc_ = curl_easy_setopt(e, opt, val);                              \
    if (rc_ != CURLE_OK)                                                       \
      return rc_;                                                              \
  } while (0)

/* The body read from the file as it is sent; its size is known, so curl
 * sends a Content-Length (no chunked encoding). */
static CURLcode setup_body_file(CURL *e, http_req *req) {
  SET(CURLOPT_POST, 1L);
  SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->in_size);
  SET(CURLOPT_READFUNCTION, on_upload);
  SET(CURLOPT_READDATA, (void *)req);
  SET(CURLOPT_SEEKFUNCTION, on_seek);
  SET(CURLOPT_SEEKDATA, (void *)req);
  return CURLE_OK;
}

static CURLcode setup_method(CURL *e, const req_opts *o, http_req *req) {
  const char *m = o->method;
  int has_body = o->body || o->body_file;
  if (o->body_file) {
    CURLcode rc = setup_body_file(e, req);
    if (rc != CURLE_OK)
      return rc;
  } else if (o->body || (m && strcmp(m, "POST") == 0)) {
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    SET(CURLOPT_COPYPOSTFIELDS, o->body ? o->body : "");
  }
  if (m && strcmp(m, "HEAD") == 0)
    SET(CURLOPT_NOBODY, 1L);
  else if (m && strcmp(m, has_body ? "POST" : "GET") != 0)
    SET(CURLOPT_CUSTOMREQUEST, m);
  return CURLE_OK;
}

static CURLcode setup_easy(CURL *e, const req_opts *o, http_req *req) {
  SET(CURLOPT_URL, o->url);
  SET(CURLOPT_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  SET(CURLOPT_NOSIGNAL, 1L);
  SET(CURLOPT_PRIVATE, (void *)req);
  SET(CURLOPT_ERRORBUFFER, req->errbuf);
  SET(CURLOPT_WRITEFUNCTION, on_body);
  SET(CURLOPT_WRITEDATA, (void *)req);
  SET(CURLOPT_HEADERFUNCTION, on_header);
  SET(CURLOPT_HEADERDATA, (void *)req);
  SET(CURLOPT_TIMEOUT_MS, to_ms(o->timeout));
  SET(CURLOPT_CONNECTTIMEOUT_MS, to_ms(o->connect_timeout));
  SET(CURLOPT_FOLLOWLOCATION, o->follow ? 1L : 0L);
  SET(CURLOPT_MAXREDIRS, MAX_REDIRS);
  SET(CURLOPT_SSL_VERIFYPEER, 1L);
  SET(CURLOPT_SSL_VERIFYHOST, 2L);
  if (o->cainfo)
    SET(CURLOPT_CAINFO, o->cainfo);
  /* the CA cache works only without a CA directory (a TLS backend without
   * CA directories, Schannel, refuses the option: nothing to leave out) */
  if (o->cainfo || req->m->default_ca_usable)
    curl_easy_setopt(e, CURLOPT_CAPATH, NULL);
  SET(CURLOPT_SHARE, req->m->share);
  SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
  SET(CURLOPT_OPENSOCKETDATA, (void *)req->m);
  SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
  SET(CURLOPT_CLOSESOCKETDATA, (void *)req->m);
  SET(CURLOPT_USERAGENT, "goliat-host/" HOST_VERSION);
  /* every encoding this libcurl decodes is offered; the body (and
   * max_size) is the decoded one */
  if (o->compressed)
    SET(CURLOPT_ACCEPT_ENCODING, "");
  if (req->max_size > 0 && !(o->method && strcmp(o->method, "HEAD") == 0))
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)req->max_size);
  SET(CURLOPT_HTTPHEADER, req->headers);
  return setup_method(e, o, req);
}

#undef SET

static http_req *req_new(http_multi *m, const req_opts *o) {
  http_req *req = calloc(1, sizeof *req);
  if (!req)
    return NULL;
  req->m = m;
  req->out_fd = -1;
  req->in_fd = -1;
  req->waiter.ref = LUA_NOREF;
  req->max_size =
      o->max_size >= (double)SIZE_MAX ? SIZE_MAX : (size_t)o->max_size;
  if (o->output) {
    size_t n = strlen(o->output) + 1;
    req->out_path = malloc(n);
    if (!req->out_path) {
      free(req);
      return NULL;
    }
    memcpy(req->out_path, o->output, n);
  }
  return req;
}

/* host.http.request(opts): waits; response or nil, message, code. */
static int l_request(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  task_check_can_wait(L, WHAT);
  req_opts o;
  read_opts(L, &o);
  host_ctx *ctx = host_get(L);
  http_multi *m = get_multi(ctx);
  http_req *req = m ? req_new(m, &o) : NULL;
  if (!req)
    return luaL_error(L, WHAT ": out of memory");
  req->easy = m->nspare > 0 ? m->spare[--m->nspare] : curl_easy_init();
  if (!build_headers(L, 2, &o, req) || !req->easy) {
    req_free(req);
    return luaL_error(L, WHAT ": out of memory");
  }
  int err = o.body_file ? in_open(req, o.body_file) : 0;
  if (err < 0) {
    req_free(req);
    return host_fail(L, "io", "cannot open the body file: %s",
                     uv_strerror(err));
  }
  CURLcode rc = setup_easy(req->easy, &o, req);
  if (rc != CURLE_OK) {
    req_free(req);
    return host_fail(L, "transfer", "cannot set up the request: %s",
                     curl_easy_strerror(rc));
  }
  if (o.output) {
    err = out_open(&ctx->loop, o.output, &req->out_fd);
    if (err < 0) {
      req_free(req);
      return host_fail(L, "io", "cannot open the output file: %s",
                       uv_strerror(err));
    }
  }
  if (curl_multi_add_handle(m->multi, req->easy) != CURLM_OK) {
    out_finish(req, 1);
    req_free(req);
    return luaL_error(L, WHAT ": cannot start the transfer");
  }
  req_link(m, req);
  lua_settop(L, 0);
  return task_wait(L, &req->waiter);
}

void host_open_http_client(lua_State *L) {
  if (lua_getfield(L, -1, "http") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "http");
  }
  lua_pushcfunction(L, l_request);
  lua_setfield(L, -2, "request");
  lua_pop(L, 1);
}
