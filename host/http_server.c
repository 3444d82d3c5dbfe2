/* http_server.c: host.http.serve, an HTTP/1.1 server over libuv TCP.
 *
 * Three layers, from the bytes up:
 *  - parsing (plain C: no Lua, no libuv). http_parser does all the HTTP
 *    work; its callbacks copy the request into an hs_request and pause the
 *    parser at the end of each message. http_server_parse_for_fuzz() drives
 *    this layer alone (see http_server.h).
 *  - connections (libuv). Each connection serves one request at a time:
 *    when a request is complete it stops reading, keeps the bytes it has not
 *    parsed yet, and resumes with them once the response is written.
 *  - Lua. Each request starts a task (the responder) that runs the handler
 *    in a task of its own and waits for it, so that it can answer even when
 *    the watchdog stops the handler; l_respond() turns the handler's
 *    results into a response.
 *
 * Lifetimes. Every libuv handle is malloc'd and freed in its close callback,
 * because the Lua state may be closed before libuv finishes closing
 * handles. A connection is reference counted: its socket, its timer, each
 * write or shutdown request, and the handler in flight (a Lua "token"
 * userdata) hold one reference each. A server is held by its Lua object and
 * its listening socket; the Lua object is anchored in the registry until
 * close(), so a server keeps serving (and keeps the host alive) even when
 * the script drops it. Nothing touches Lua once ctx->closing is set.
 */
#include "http_server.h"

#include <http_parser.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================
 * Parsing
 * ====================================================================== */

typedef struct hs_buf {
  char *data;
  size_t len, cap;
} hs_buf;

typedef struct hs_header {
  size_t name_off, name_len; /* in hs_request.fields */
  size_t value_off, value_len;
} hs_header;

typedef struct hs_request {
  hs_buf url;    /* the request target as sent */
  hs_buf fields; /* header names (lower-cased) and values, back to back */
  hs_buf body;
  hs_header headers[HTTP_SERVER_MAX_HEADERS];
  int nheaders;
  int in_value;     /* the last header callback was for a value */
  int headers_done; /* later header callbacks are trailers: ignored */
  int keep_alive;   /* the connection may serve another request */
  unsigned method;  /* enum http_method */
  unsigned short http_major, http_minor;
  size_t path_off, path_len; /* in url; path_len 0 means "/" */
  size_t query_off, query_len;
  uint64_t body_size; /* bytes of the body so far, in body or spooled */
  int spooled;        /* the body goes to the spool, not to body */
} hs_request;

/* Where a body too large for memory goes: append len bytes (data may be
 * NULL when len is 0) to the request's spool, creating it at the first
 * call. Returns 0, or the status to reply (507). */
typedef int (*hs_spool_fn)(void *ud, const char *data, size_t len);

typedef struct hs_parse {
  http_parser parser;
  hs_request req;
  size_t max_body;
  size_t spool_over; /* a larger body goes to spool, when set */
  hs_spool_fn spool; /* NULL: every body stays in memory */
  void *spool_ud;
  int status;        /* the error status to reply (400, 413...), or 0 */
  int complete;      /* req holds a whole request; the parser is paused */
  int send_continue; /* the client waits for "100 Continue" */
} hs_parse;

static int buf_reserve(hs_buf *b, size_t extra) {
  if (extra > SIZE_MAX / 2 - b->len)
    return -1;
  size_t need = b->len + extra;
  if (need <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p)
    return -1;
  b->data = p;
  b->cap = cap;
  return 0;
}

static int buf_append(hs_buf *b, const void *s, size_t n) {
  if (n == 0)
    return 0;
  if (buf_reserve(b, n) != 0)
    return -1;
  memcpy(b->data + b->len, s, n);
  b->len += n;
  return 0;
}

static void buf_free(hs_buf *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

static int lower(int c) {
  return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c;
}

static int ieq(const char *a, size_t alen, const char *b) {
  size_t blen = strlen(b);
  if (alen != blen)
    return 0;
  for (size_t i = 0; i < alen; i++)
    if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
      return 0;
  return 1;
}

static void request_clear(hs_request *r) {
  buf_free(&r->url);
  buf_free(&r->fields);
  buf_free(&r->body);
  memset(r, 0, sizeof *r);
}

static hs_parse *parse_of(http_parser *hp) {
  return hp->data;
}

/* Stop parsing: the server will answer status and close. */
static int parse_fail(hs_parse *p, int status) {
  if (!p->status)
    p->status = status;
  return -1;
}

static int on_message_begin(http_parser *hp) {
  request_clear(&parse_of(hp)->req);
  return 0;
}

static int on_url(http_parser *hp, const char *at, size_t len) {
  hs_parse *p = parse_of(hp);
  if (len > HTTP_SERVER_MAX_URL - p->req.url.len)
    return parse_fail(p, 414);
  if (buf_append(&p->req.url, at, len) != 0)
    return parse_fail(p, 503);
  return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t len) {
  hs_parse *p = parse_of(hp);
  hs_request *r = &p->req;
  if (r->headers_done)
    return 0;
  if (r->nheaders == 0 || r->in_value) {
    if (r->nheaders == HTTP_SERVER_MAX_HEADERS)
      return parse_fail(p, 431);
    hs_header *h = &r->headers[r->nheaders++];
    memset(h, 0, sizeof *h);
    h->name_off = r->fields.len;
    r->in_value = 0;
  }
  if (buf_reserve(&r->fields, len) != 0)
    return parse_fail(p, 503);
  for (size_t i = 0; i < len; i++)
    r->fields.data[r->fields.len++] = (char)lower((unsigned char)at[i]);
  r->headers[r->nheaders - 1].name_len += len;
  return 0;
}

static int on_header_value(http_parser *hp, const char *at, size_t len) {
  hs_parse *p = parse_of(hp);
  hs_request *r = &p->req;
  if (r->headers_done)
    return 0;
  if (r->nheaders == 0)
    return parse_fail(p, 400);
  hs_header *h = &r->headers[r->nheaders - 1];
  if (!r->in_value) {
    r->in_value = 1;
    h->value_off = r->fields.len;
  }
  if (buf_append(&r->fields, at, len) != 0)
    return parse_fail(p, 503);
  h->value_len += len;
  return 0;
}

/* The value of header name (lower case), or NULL. */
static const char *request_header(const hs_request *r, const char *name,
                                  size_t *len) {
  for (int i = 0; i < r->nheaders; i++) {
    const hs_header *h = &r->headers[i];
    if (ieq(r->fields.data + h->name_off, h->name_len, name)) {
      *len = h->value_len;
      return r->fields.data + h->value_off;
    }
  }
  return NULL;
}

/* From now on the body goes to the spool, starting with the part held in
 * memory so far. */
static int spool_start(hs_parse *p) {
  hs_request *r = &p->req;
  r->spooled = 1;
  int status = p->spool(p->spool_ud, r->body.data, r->body.len);
  buf_free(&r->body);
  return status ? parse_fail(p, status) : 0;
}

static int on_headers_complete(http_parser *hp) {
  hs_parse *p = parse_of(hp);
  p->req.headers_done = 1;
  int has_length = (hp->flags & F_CONTENTLENGTH) != 0;
  if (has_length && hp->content_length > p->max_body)
    return parse_fail(p, 413);
  size_t n;
  const char *expect = request_header(&p->req, "expect", &n);
  if (expect && hp->http_major == 1 && hp->http_minor >= 1 &&
      ieq(expect, n, "100-continue"))
    p->send_continue = 1;
  if (p->spool && has_length && hp->content_length > p->spool_over)
    return spool_start(p); /* known to be large: no byte of it in memory */
  return 0;
}

static int on_body(http_parser *hp, const char *at, size_t len) {
  hs_parse *p = parse_of(hp);
  hs_request *r = &p->req;
  if (len > p->max_body - r->body_size)
    return parse_fail(p, 413);
  r->body_size += len;
  if (!r->spooled && p->spool && r->body_size > p->spool_over &&
      spool_start(p) != 0)
    return -1;
  if (r->spooled) {
    int status = p->spool(p->spool_ud, at, len);
    return status ? parse_fail(p, status) : 0;
  }
  if (buf_append(&r->body, at, len) != 0)
    return parse_fail(p, 503);
  return 0;
}

/* Find the path and the query in the request target. */
static int split_target(hs_request *r) {
  const char *u = r->url.data;
  size_t n = r->url.len;
  if (n == 0)
    return -1;
  if (r->method == HTTP_CONNECT || u[0] != '/') {
    if (r->method == HTTP_CONNECT || (n == 1 && u[0] == '*')) {
      r->path_len = n;
      return 0;
    }
    struct http_parser_url pu;
    http_parser_url_init(&pu);
    if (http_parser_parse_url(u, n, 0, &pu) != 0)
      return -1;
    if (pu.field_set & (1 << UF_PATH)) {
      r->path_off = pu.field_data[UF_PATH].off;
      r->path_len = pu.field_data[UF_PATH].len;
    }
    if (pu.field_set & (1 << UF_QUERY)) {
      r->query_off = pu.field_data[UF_QUERY].off;
      r->query_len = pu.field_data[UF_QUERY].len;
    }
    return 0;
  }
  const char *end = memchr(u, '#', n);
  size_t stop = end ? (size_t)(end - u) : n;
  const char *q = memchr(u, '?', stop);
  r->path_len = q ? (size_t)(q - u) : stop;
  if (q) {
    r->query_off = r->path_len + 1;
    r->query_len = stop - r->query_off;
  }
  return 0;
}

static int on_message_complete(http_parser *hp) {
  hs_parse *p = parse_of(hp);
  hs_request *r = &p->req;
  r->keep_alive = http_should_keep_alive(hp) && !hp->upgrade;
  r->method = hp->method;
  r->http_major = hp->http_major;
  r->http_minor = hp->http_minor;
  if (split_target(r) != 0)
    return parse_fail(p, 400);
  p->complete = 1;
  http_parser_pause(hp, 1); /* one request at a time */
  return 0;
}

static const http_parser_settings parse_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void parse_init(hs_parse *p, size_t max_body) {
  memset(p, 0, sizeof *p);
  http_parser_init(&p->parser, HTTP_REQUEST);
  p->parser.data = p;
  p->max_body = max_body;
}

static void parse_free(hs_parse *p) {
  request_clear(&p->req);
}

/* Parse up to len bytes; returns how many were used. Afterwards either
 * p->complete (a request is ready), p->status (an error to reply), or every
 * byte was used and more are needed. */
static size_t parse_feed(hs_parse *p, const char *data, size_t len) {
  size_t n = http_parser_execute(&p->parser, &parse_settings, data, len);
  enum http_errno e = HTTP_PARSER_ERRNO(&p->parser);
  if (e == HPE_PAUSED && p->complete)
    return n;
  if (e != HPE_OK)
    parse_fail(p, e == HPE_HEADER_OVERFLOW ? 431 : 400);
  else if (n != len)
    parse_fail(p, 400);
  return n;
}

/* Forget the request just handled and let the parser go on. */
static void parse_next(hs_parse *p) {
  request_clear(&p->req);
  p->complete = 0;
  p->send_continue = 0;
  http_parser_pause(&p->parser, 0);
}

/* Feed data to p, piece bytes at a time (0: all at once), as a connection
 * would; returns how many complete requests were parsed. */
static int parse_run(hs_parse *p, const char *data, size_t len, size_t piece) {
  int count = 0;
  while (len > 0 && !p->status) {
    size_t n = parse_feed(p, data, piece && piece < len ? piece : len);
    data += n;
    len -= n;
    if (p->complete) {
      count++;
      if (!p->req.keep_alive || n == 0)
        break;
      parse_next(p);
    } else if (n == 0) {
      break;
    }
  }
  return count;
}

int http_server_parse_pieces(const char *data, size_t len, size_t piece,
                             int *status) {
  hs_parse p;
  parse_init(&p, HTTP_SERVER_MAX_BODY);
  int count = parse_run(&p, data, len, piece);
  if (status)
    *status = p.status;
  parse_free(&p);
  return count;
}

/* The spool of http_server_parse_spooled: reads every byte handed over
 * (for the sanitizers), keeps none. */
static int sum_spool(void *ud, const char *data, size_t len) {
  unsigned *sum = ud;
  for (size_t i = 0; i < len; i++)
    *sum += (unsigned char)data[i];
  return 0;
}

int http_server_parse_spooled(const char *data, size_t len, size_t piece,
                              size_t spool_over, int *status) {
  hs_parse p;
  unsigned sum = 0;
  parse_init(&p, HTTP_SERVER_MAX_BODY);
  p.spool = sum_spool;
  p.spool_ud = &sum;
  p.spool_over = spool_over;
  int count = parse_run(&p, data, len, piece);
  if (status)
    *status = p.status;
  parse_free(&p);
  return count;
}

int http_server_parse_for_fuzz(const char *data, size_t len) {
  return http_server_parse_pieces(data, len, 0, NULL);
}

#ifndef HTTP_SERVER_PARSE_ONLY

/* ======================================================================
 * Connections
 * ====================================================================== */

#include "fs.h"
#include "host.h"
#include "log.h"
#include "task.h"

#define SERVER_MT "host.http.server"
#define TOKEN_MT "host.http.token"
#ifndef HTTP_SERVER_IDLE_MS /* overridable at build time, for tests */
#define HTTP_SERVER_IDLE_MS 60000
#endif
#define IDLE_MS HTTP_SERVER_IDLE_MS /* closes a connection silent that long */
#define LINGER_MS 2000     /* after our last response: wait for the client */
#define READ_SIZE 65536    /* bytes per read */
#define STREAM_BATCH 65536 /* body_repeat: bytes per write, about */
#define MAX_CONNS 1024     /* per server; more are closed at once */
#define BACKLOG 128
/* "[" IPv6 address "]:" port and the NUL: the longest name of an address */
#define ADDR_NAME_SIZE (INET6_ADDRSTRLEN + sizeof "[]:65535" - 1)

static int buf_puts(hs_buf *b, const char *s) {
  return buf_append(b, s, strlen(s));
}

#define HS_PRINTF(f, a) HOST_PRINTF(f, a)

static int buf_printf(hs_buf *b, const char *fmt, ...) HS_PRINTF(2, 3);

static int buf_printf(hs_buf *b, const char *fmt, ...) {
  char tmp[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0 || (size_t)n >= sizeof tmp)
    return -1;
  return buf_append(b, tmp, (size_t)n);
}

/* Drop the first n bytes. */
static void buf_consume(hs_buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

typedef struct hs_server hs_server;

typedef struct hs_conn {
  host_ctx *ctx;
  hs_server *srv; /* NULL once the server let it go */
  uv_tcp_t *tcp;
  uv_timer_t *timer; /* idle, then linger timer */
  hs_parse parse;
  hs_buf pending; /* received bytes not parsed yet */
  int refs;
  int closing;     /* uv_close has been called */
  int reading;     /* uv_read_start is in effect */
  int busy;        /* a request is being handled or its reply written */
  int draining;    /* our side is shut down: discard what comes */
  int peer_eof;    /* the client will send nothing more */
  int close_after; /* close once the current response is written */
  int head;        /* the current request is HEAD: no body in the reply */
  int http10;      /* the current request is HTTP/1.0 */
  /* The rest of a body_repeat response, written as the socket drains: one
   * batch of whole chunks, rewritten until stream_left bytes are out. */
  char *stream;
  size_t stream_len;    /* bytes in a full batch */
  uint64_t stream_left; /* bytes still to write */
  /* The spool file of the request being read or handled (see spool_dir):
   * open while the body is written to it, removed once the reply is out. */
  uv_file spool_fd; /* -1 when not open */
  char *spool_path; /* NULL when there is none */
  struct hs_conn *prev, *next;
  char peer[ADDR_NAME_SIZE];
  char desc[160]; /* "GET /path" for logs */
} hs_conn;

/* Per host: every open server, to close them at shutdown. */
typedef struct hs_registry {
  hs_server *servers;
  int responder_ref; /* the Lua function each request task runs */
} hs_registry;

struct hs_server {
  host_ctx *ctx;
  hs_registry *reg;
  uv_tcp_t *tcp;
  int refs;   /* the Lua object + the listening socket */
  int closed; /* close() ran */
  int handler_ref;
  int self_ref; /* the Lua object, anchored while the server listens */
  int port;
  size_t max_body;
  char *spool_dir; /* where large bodies go, or NULL: all in memory */
  size_t spool_over;
  int nconns;
  hs_conn *conns;
  hs_server *prev, *next;
  char where[80]; /* "127.0.0.1:8080" */
};

/* What a write is, for its completion. */
enum { W_PART, W_LAST, W_STREAM };

typedef struct hs_write {
  uv_write_t req;
  hs_conn *conn;
  char *data; /* ours to free, or NULL (a stream batch) */
  int kind;   /* W_PART: more follows from elsewhere (100 Continue);
               * W_LAST: the end of a response; W_STREAM: then write the
               * next batch of the stream */
} hs_write;

static void conn_process(hs_conn *c);

static void stream_free(hs_conn *c) {
  free(c->stream);
  c->stream = NULL;
  c->stream_len = 0;
  c->stream_left = 0;
}

/* ---- spool files ---- */

/* Close the spool file if open; 0 or the error of closing it. */
static int spool_close(hs_conn *c) {
  if (c->spool_fd < 0)
    return 0;
  uv_fs_t req;
  int rc = uv_fs_close(NULL, &req, c->spool_fd, NULL);
  uv_fs_req_cleanup(&req);
  c->spool_fd = -1;
  return rc;
}

/* Forget the spool file, removing it unless the handler moved it away. */
static void spool_discard(hs_conn *c) {
  spool_close(c);
  if (!c->spool_path)
    return;
  uv_fs_t req;
  int rc = uv_fs_unlink(NULL, &req, c->spool_path, NULL);
  uv_fs_req_cleanup(&req);
  if (rc != 0 && rc != UV_ENOENT)
    host_log(LOG_WARN, "http: cannot remove the spool file %s: %s",
             c->spool_path, uv_strerror(rc));
  free(c->spool_path);
  c->spool_path = NULL;
}

/* "<dir>/.spool-<pid>-<n>-<16 hex digits>.part": unique across requests,
 * servers, processes and restarts. NULL when out of memory. */
static char *spool_name(const char *dir) {
  static unsigned counter;
  unsigned char rnd[8];
  char hex[2 * sizeof rnd + 1];
  if (uv_random(NULL, NULL, rnd, sizeof rnd, 0, NULL) != 0)
    memset(rnd, 0, sizeof rnd); /* pid and counter still differ */
  for (size_t i = 0; i < sizeof rnd; i++)
    snprintf(hex + 2 * i, 3, "%02x", rnd[i]);
  size_t dlen = strlen(dir);
  int sep = dlen > 0 && dir[dlen - 1] != '/' && dir[dlen - 1] != '\\';
  size_t size = dlen + 80;
  char *path = malloc(size);
  if (path)
    snprintf(path, size, "%s%s.spool-%d-%u-%s.part", dir, sep ? "/" : "",
             (int)uv_os_getpid(), ++counter, hex);
  return path;
}

/* Create the connection's spool file; 0 or a libuv error. */
static int spool_open(hs_conn *c) {
  c->spool_path = spool_name(c->srv->spool_dir);
  if (!c->spool_path)
    return UV_ENOMEM;
  uv_fs_t req;
  int rc =
      uv_fs_open(NULL, &req, c->spool_path,
                 UV_FS_O_WRONLY | UV_FS_O_CREAT | UV_FS_O_EXCL, 0600, NULL);
  uv_fs_req_cleanup(&req);
  if (rc < 0) {
    free(c->spool_path);
    c->spool_path = NULL;
    return rc;
  }
  c->spool_fd = rc;
  return 0;
}

/* Log why a body could not be spooled; returns the status to reply. */
static int spool_failed(hs_conn *c, int err) {
  host_log(LOG_ERROR, "http: %s: cannot write a request body to %s: %s",
           c->peer, c->srv->spool_dir, uv_strerror(err));
  return 507; /* Insufficient Storage */
}

/* The parser's spool (hs_spool_fn): append to the spool file. */
static int spool_write(void *ud, const char *data, size_t len) {
  hs_conn *c = ud;
  int rc = c->spool_fd < 0 && !c->spool_path ? spool_open(c) : 0;
  if (rc == 0 && c->spool_fd < 0)
    rc = UV_EBADF; /* cannot happen: one spool file per request */
  if (rc == 0)
    rc = host_fs_write_all(c->spool_fd, data, len);
  return rc == 0 ? 0 : spool_failed(c, rc);
}

static void conn_unref(hs_conn *c) {
  if (--c->refs > 0)
    return;
  spool_discard(c);
  parse_free(&c->parse);
  buf_free(&c->pending);
  stream_free(c);
  free(c);
}

static void on_conn_handle_closed(uv_handle_t *h) {
  hs_conn *c = h->data;
  free(h);
  conn_unref(c);
}

static void conn_unlink(hs_conn *c) {
  hs_server *srv = c->srv;
  if (!srv)
    return;
  if (c->prev)
    c->prev->next = c->next;
  else
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  c->prev = c->next = NULL;
  srv->nconns--;
  c->srv = NULL;
}

/* Close at once (idempotent). A handler in flight keeps the struct alive;
 * its response is then dropped. */
static void conn_close(hs_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  c->reading = 0;
  conn_unlink(c);
  uv_close((uv_handle_t *)c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)c->timer, on_conn_handle_closed);
}

/* Close at once with a TCP reset (a response's abort = true): the client
 * sees the connection reset, without any reply. */
static void conn_abort(hs_conn *c) {
  if (c->closing)
    return;
  c->closing = 1;
  c->reading = 0;
  conn_unlink(c);
  if (uv_tcp_close_reset(c->tcp, on_conn_handle_closed) != 0)
    uv_close((uv_handle_t *)c->tcp, on_conn_handle_closed);
  uv_close((uv_handle_t *)c->timer, on_conn_handle_closed);
}

static void on_timer(uv_timer_t *t) {
  hs_conn *c = t->data;
  if (!c->draining)
    host_log(LOG_DEBUG, "http: closing idle connection from %s", c->peer);
  conn_close(c);
}

static void timer_start(hs_conn *c, uint64_t ms) {
  if (!c->closing)
    uv_timer_start(c->timer, on_timer, ms, 0);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  char *p = malloc(READ_SIZE);
  *buf = uv_buf_init(p, p ? READ_SIZE : 0);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void conn_start_reading(hs_conn *c) {
  if (c->reading || c->closing || c->peer_eof)
    return;
  if (uv_read_start((uv_stream_t *)c->tcp, on_alloc, on_read) != 0) {
    conn_close(c);
    return;
  }
  c->reading = 1;
}

static void conn_stop_reading(hs_conn *c) {
  if (!c->reading || c->closing)
    return;
  uv_read_stop((uv_stream_t *)c->tcp);
  c->reading = 0;
}

static void on_shutdown(uv_shutdown_t *req, int status) {
  hs_conn *c = req->data;
  free(req);
  if (status < 0 || c->peer_eof)
    conn_close(c);
  conn_unref(c);
}

/* Our last response is out: send FIN, then read and discard what the
 * client still sends (so that it sees our reply rather than a reset) until
 * it closes or LINGER_MS pass. */
static void conn_shutdown(hs_conn *c) {
  if (c->closing)
    return;
  c->draining = 1;
  uv_shutdown_t *req = malloc(sizeof *req);
  if (!req) {
    conn_close(c);
    return;
  }
  req->data = c;
  if (uv_shutdown(req, (uv_stream_t *)c->tcp, on_shutdown) != 0) {
    free(req);
    conn_close(c);
    return;
  }
  c->refs++;
  timer_start(c, LINGER_MS);
  conn_start_reading(c);
}

/* The response just written is complete: go on with this connection. */
static void conn_response_done(hs_conn *c) {
  c->busy = 0;
  if (c->close_after) {
    conn_shutdown(c);
    return;
  }
  conn_process(c);
  if (!c->busy && c->peer_eof)
    conn_close(c);
}

static void conn_stream_next(hs_conn *c);

static void on_written(uv_write_t *req, int status) {
  hs_write *w = req->data;
  hs_conn *c = w->conn;
  int kind = w->kind;
  free(w->data);
  free(w);
  if (status < 0) {
    conn_close(c);
  } else if (!c->closing && kind == W_STREAM) {
    conn_stream_next(c);
  } else if (!c->closing && kind == W_LAST) {
    stream_free(c);
    spool_discard(c); /* the reply is out: the handler is done with it */
    conn_response_done(c);
  }
  conn_unref(c);
}

/* Write len bytes at data; own (not NULL) is freed once written. Returns 0
 * or a libuv error (then own is not freed). */
static int conn_write_bytes(hs_conn *c, char *data, size_t len, char *own,
                            int kind) {
  if (len > UINT_MAX)
    return UV_E2BIG;
  hs_write *w = malloc(sizeof *w);
  if (!w)
    return UV_ENOMEM;
  w->conn = c;
  w->data = own;
  w->kind = kind;
  w->req.data = w;
  uv_buf_t ub = uv_buf_init(data, (unsigned)len);
  int rc = uv_write(&w->req, (uv_stream_t *)c->tcp, &ub, 1, on_written);
  if (rc != 0) {
    free(w);
    return rc;
  }
  c->refs++;
  return 0;
}

/* Write the bytes of b (taking them over). Returns 0 or a libuv error. */
static int conn_write(hs_conn *c, hs_buf *b, int kind) {
  int rc = conn_write_bytes(c, b->data, b->len, b->data, kind);
  if (rc == 0) {
    b->data = NULL;
    b->len = b->cap = 0;
  }
  return rc;
}

/* The previous write of a stream is out: write the next batch. One batch
 * at a time, so a stream of any length holds one batch of memory. */
static void conn_stream_next(hs_conn *c) {
  size_t n =
      c->stream_left < c->stream_len ? (size_t)c->stream_left : c->stream_len;
  c->stream_left -= n;
  int kind = c->stream_left > 0 ? W_STREAM : W_LAST;
  if (conn_write_bytes(c, c->stream, n, NULL, kind) != 0)
    conn_close(c);
}

/* ---- formatting responses ---- */

static const char *reason_of(int status) {
  const char *r = http_status_str((enum http_status)status);
  return r && r[0] != '<' ? r : "Unknown";
}

static int status_has_body(int status) {
  return status >= 200 && status != 204 && status != 304;
}

/* The status line and our own headers, up to the blank line excluded. */
static int put_head(hs_buf *b, hs_conn *c, int status, uint64_t body_len) {
  int rc = buf_printf(b, "HTTP/1.1 %d %s\r\n", status, reason_of(status));
  if (rc == 0 && status_has_body(status))
    rc = buf_printf(b, "Content-Length: %" PRIu64 "\r\n", body_len);
  if (rc == 0 && c->close_after)
    rc = buf_puts(b, "Connection: close\r\n");
  else if (rc == 0 && c->http10)
    rc = buf_puts(b, "Connection: keep-alive\r\n");
  return rc;
}

/* Finish a response: blank line and body (unless HEAD or bodiless). */
static int put_body(hs_buf *b, hs_conn *c, int status, const char *body,
                    size_t len) {
  int rc = buf_puts(b, "\r\n");
  if (rc == 0 && status_has_body(status) && !c->head)
    rc = buf_append(b, body, len);
  return rc;
}

/* A short plain-text response of our own (errors). */
static int format_simple(hs_buf *b, hs_conn *c, int status) {
  char body[80];
  int n = snprintf(body, sizeof body, "%s\n", reason_of(status));
  if (n < 0 || (size_t)n >= sizeof body)
    return -1;
  if (put_head(b, c, status, (size_t)n) != 0 ||
      buf_puts(b, "Content-Type: text/plain; charset=utf-8\r\n") != 0)
    return -1;
  return put_body(b, c, status, body, (size_t)n);
}

/* Reply status and close: for requests we cannot hand to a handler. */
static void conn_reply_error(hs_conn *c, int status) {
  hs_buf b = {0};
  host_log(LOG_DEBUG, "http: %s: replying %d and closing", c->peer, status);
  spool_discard(c); /* the request will not be handled */
  conn_stop_reading(c);
  uv_timer_stop(c->timer);
  c->busy = 1;
  c->close_after = 1;
  c->head = 0;
  if (format_simple(&b, c, status) != 0 || conn_write(c, &b, W_LAST) != 0)
    conn_close(c);
  buf_free(&b);
}

static void conn_send_continue(hs_conn *c) {
  hs_buf b = {0};
  if (buf_puts(&b, "HTTP/1.1 100 Continue\r\n\r\n") != 0 ||
      conn_write(c, &b, W_PART) != 0)
    conn_close(c);
  buf_free(&b);
}

/* ---- reading requests ---- */

static void conn_dispatch(hs_conn *c);

/* Parse what is pending until a request is complete (it is then handed to
 * its handler) or everything is used (then read more). */
static void conn_process(hs_conn *c) {
  while (!c->busy && !c->closing && !c->draining && c->pending.len > 0) {
    size_t n = parse_feed(&c->parse, c->pending.data, c->pending.len);
    buf_consume(&c->pending, n);
    if (c->parse.status) {
      conn_reply_error(c, c->parse.status);
      return;
    }
    if (c->parse.send_continue && !c->parse.complete) {
      c->parse.send_continue = 0;
      conn_send_continue(c);
    }
    if (c->parse.complete)
      conn_dispatch(c);
    else if (n == 0)
      break;
  }
  if (!c->busy && !c->closing && !c->draining) {
    conn_start_reading(c);
    timer_start(c, IDLE_MS);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  hs_conn *c = s->data;
  if (nread > 0 && !c->closing && !c->draining) {
    if (buf_append(&c->pending, buf->base, (size_t)nread) != 0) {
      conn_close(c);
    } else {
      timer_start(c, IDLE_MS);
      conn_process(c);
    }
  } else if (nread < 0 && !c->closing) {
    conn_stop_reading(c);
    c->peer_eof = 1;
    if (nread != UV_EOF || c->draining || !c->busy)
      conn_close(c);
  }
  free(buf->base);
}

/* ======================================================================
 * Lua: requests and responses
 * ====================================================================== */

typedef struct hs_token {
  hs_conn *conn; /* NULL until the request task is started */
  int done;
} hs_token;

static void push_lstring(lua_State *L, const hs_buf *b, size_t off,
                         size_t len) {
  lua_pushlstring(L, len ? b->data + off : "", len);
}

/* Header value without the spaces and tabs that may trail it. */
static size_t trimmed(const char *v, size_t len) {
  while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
    len--;
  return len;
}

/* req.headers: lower-case names; repeated headers joined with ", " (with
 * "; " for cookie). */
static void push_headers(lua_State *L, const hs_request *r) {
  lua_createtable(L, 0, r->nheaders);
  for (int i = 0; i < r->nheaders; i++) {
    const hs_header *h = &r->headers[i];
    const char *name = r->fields.data + h->name_off;
    const char *value = h->value_len ? r->fields.data + h->value_off : "";
    lua_pushlstring(L, name, h->name_len);
    lua_pushvalue(L, -1);
    int repeated = lua_rawget(L, -3) != LUA_TNIL;
    if (repeated)
      lua_pushstring(L, ieq(name, h->name_len, "cookie") ? "; " : ", ");
    else
      lua_pop(L, 1);
    lua_pushlstring(L, value, trimmed(value, h->value_len));
    if (repeated)
      lua_concat(L, 3);
    lua_rawset(L, -3);
  }
}

/* req.body, or req.body_file and req.body_size for a spooled body */
static void push_body(lua_State *L, const hs_conn *c) {
  const hs_request *r = &c->parse.req;
  if (!r->spooled) {
    push_lstring(L, &r->body, 0, r->body.len);
    lua_setfield(L, -2, "body");
    return;
  }
  lua_pushstring(L, c->spool_path);
  lua_setfield(L, -2, "body_file");
  lua_pushinteger(L, (lua_Integer)r->body_size);
  lua_setfield(L, -2, "body_size");
}

/* req = {method, path, query, target, headers, body, peer}, with body_file
 * and body_size instead of body for a spooled body */
static void push_request(lua_State *L, const hs_conn *c) {
  const hs_request *r = &c->parse.req;
  lua_createtable(L, 0, 8);
  lua_pushstring(L, http_method_str((enum http_method)r->method));
  lua_setfield(L, -2, "method");
  if (r->path_len)
    push_lstring(L, &r->url, r->path_off, r->path_len);
  else
    lua_pushliteral(L, "/");
  lua_setfield(L, -2, "path");
  push_lstring(L, &r->url, r->query_off, r->query_len);
  lua_setfield(L, -2, "query");
  push_lstring(L, &r->url, 0, r->url.len);
  lua_setfield(L, -2, "target");
  push_headers(L, r);
  lua_setfield(L, -2, "headers");
  push_body(L, c);
  lua_pushstring(L, c->peer);
  lua_setfield(L, -2, "peer");
}

/* An error value as text, without calling metamethods. */
static const char *errmsg(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING)
    return lua_tostring(L, idx);
  return lua_pushfstring(L, "(error object is a %s value)",
                         luaL_typename(L, idx));
}

/* ---- handler results -> response bytes ---- */

typedef struct hs_out {
  hs_conn *conn;
  hs_buf buf;  /* the response */
  hs_buf user; /* the handler's header lines */
  int status;
  int abort; /* reset the connection instead of replying */
} hs_out;

/* The fields of a response table that make the reply misbehave on purpose,
 * to test clients: abort, truncate_at, body_repeat. */
typedef struct hs_misbehave {
  int abort;
  int cut;         /* truncate_at was given */
  uint64_t cut_at; /* body bytes to send before closing */
  const char *chunk;
  size_t chunk_len;
  uint64_t count; /* times the chunk follows the body */
} hs_misbehave;

/* A field of the table at idx that is a non-negative integer (or absent:
 * returns 0). */
static int opt_count(lua_State *L, int idx, const char *field, const char *what,
                     uint64_t *out) {
  lua_getfield(L, idx, field);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  int isint;
  lua_Integer n = lua_tointegerx(L, -1, &isint);
  if (!isint || n < 0 || lua_type(L, -1) != LUA_TNUMBER)
    luaL_error(L, "'%s' must be an integer >= 0", what);
  lua_pop(L, 1);
  *out = (uint64_t)n;
  return 1;
}

/* Read the response table at idx's misbehaviour fields into m. Pushes
 * body_repeat's chunk (or nil), to keep it alive while the reply is built. */
static void read_misbehave(lua_State *L, int idx, hs_misbehave *m) {
  lua_getfield(L, idx, "abort");
  int t = lua_type(L, -1);
  if (t != LUA_TNIL && t != LUA_TBOOLEAN)
    luaL_error(L, "'abort' must be a boolean, got %s", luaL_typename(L, -1));
  m->abort = lua_toboolean(L, -1);
  lua_pop(L, 1);
  m->cut = opt_count(L, idx, "truncate_at", "truncate_at", &m->cut_at);
  if (lua_getfield(L, idx, "body_repeat") == LUA_TNIL)
    return; /* the nil stays */
  if (!lua_istable(L, -1))
    luaL_error(L, "'body_repeat' must be a table {chunk = s, count = n}");
  int rep = lua_gettop(L);
  if (!opt_count(L, rep, "count", "body_repeat.count", &m->count))
    luaL_error(L, "'body_repeat.count' must be an integer >= 0");
  if (lua_getfield(L, rep, "chunk") != LUA_TSTRING)
    luaL_error(L, "'body_repeat.chunk' must be a string");
  m->chunk = lua_tolstring(L, -1, &m->chunk_len);
  if (m->chunk_len == 0)
    luaL_error(L, "'body_repeat.chunk' must not be empty");
  lua_replace(L, rep); /* the chunk, in place of the table */
}

/* Fill the connection's stream batch: whole chunks, about STREAM_BATCH
 * bytes in all, left bytes to go. Raises when out of memory. */
static void stream_prepare(lua_State *L, hs_conn *c, const hs_misbehave *m,
                           uint64_t left) {
  uint64_t reps =
      m->chunk_len >= STREAM_BATCH ? 1 : STREAM_BATCH / m->chunk_len;
  if (reps > m->count)
    reps = m->count;
  size_t len = (size_t)reps * m->chunk_len;
  char *batch = malloc(len);
  if (!batch)
    luaL_error(L, "out of memory");
  for (size_t off = 0; off < len; off += m->chunk_len)
    memcpy(batch + off, m->chunk, m->chunk_len);
  stream_free(c);
  c->stream = batch;
  c->stream_len = len;
  c->stream_left = left;
}

static int is_tchar(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void check_header_name(lua_State *L, const char *s, size_t len) {
  if (len == 0)
    luaL_error(L, "empty header name");
  for (size_t i = 0; i < len; i++)
    if (!is_tchar((unsigned char)s[i]))
      luaL_error(L, "invalid header name '%s'", s);
}

/* Whether s (len bytes) contains the word "close", in any case. */
static int has_close(const char *s, size_t len) {
  for (size_t i = 0; i + 5 <= len; i++)
    if (ieq(s + i, 5, "close"))
      return 1;
  return 0;
}

/* One "name: value" line; the value (at the top) is a string or number. */
static void put_header_line(lua_State *L, hs_buf *b, const char *name,
                            size_t nlen) {
  int t = lua_type(L, -1);
  if (t != LUA_TSTRING && t != LUA_TNUMBER)
    luaL_error(L, "header '%s' must be a string, got %s", name,
               luaL_typename(L, -1));
  size_t vlen;
  const char *v = lua_tolstring(L, -1, &vlen);
  for (size_t i = 0; i < vlen; i++)
    if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
      luaL_error(L, "header '%s' contains a line break or a zero byte", name);
  if (buf_append(b, name, nlen) != 0 || buf_puts(b, ": ") != 0 ||
      buf_append(b, v, vlen) != 0 || buf_puts(b, "\r\n") != 0)
    luaL_error(L, "out of memory");
}

/* The handler's headers table at idx, as lines in out->user. We write
 * Content-Length and Connection ourselves: the handler's are dropped
 * ("Connection: close" is honoured). A value may also be an array of
 * strings, for headers that repeat (set-cookie). */
static void put_user_headers(lua_State *L, int idx, hs_out *out) {
  lua_pushnil(L);
  while (lua_next(L, idx) != 0) {
    if (lua_type(L, -2) != LUA_TSTRING)
      luaL_error(L, "header names must be strings, got %s",
                 luaL_typename(L, -2));
    size_t nlen, vlen;
    const char *name = lua_tolstring(L, -2, &nlen);
    check_header_name(L, name, nlen);
    if (ieq(name, nlen, "connection")) {
      const char *v = lua_tolstring(L, -1, &vlen);
      if (v && has_close(v, vlen))
        out->conn->close_after = 1;
    } else if (ieq(name, nlen, "content-length") ||
               ieq(name, nlen, "transfer-encoding")) {
      /* ours */
    } else if (lua_type(L, -1) == LUA_TTABLE) {
      lua_Integer n = luaL_len(L, -1);
      for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        put_header_line(L, &out->user, name, nlen);
        lua_pop(L, 1);
      }
    } else {
      put_header_line(L, &out->user, name, nlen);
    }
    lua_pop(L, 1);
  }
}

/* Make the values at first, first+1, first+2 status, body and headers:
 * the handler returned either a table or status, body, headers. */
static void normalize_results(lua_State *L, int first) {
  if (lua_gettop(L) < first + 2)
    lua_settop(L, first + 2);
  int t = lua_type(L, first);
  if (t == LUA_TTABLE) {
    lua_getfield(L, first, "status");
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_pushinteger(L, 200);
    }
    lua_getfield(L, first, "body");
    lua_getfield(L, first, "headers"); /* status, body, headers on top */
    lua_replace(L, first + 2);
    lua_replace(L, first + 1);
    lua_replace(L, first);
  } else if (t != LUA_TNUMBER) {
    luaL_error(L,
               "the handler returned %s instead of a response table or "
               "a status",
               luaL_typename(L, first));
  }
}

/* Build the response from the handler's results at first and after. */
static void build_reply(lua_State *L, int first, hs_out *out) {
  hs_conn *c = out->conn;
  hs_misbehave m = {0};
  if (lua_type(L, first) == LUA_TTABLE) {
    lua_settop(L, first);
    read_misbehave(L, first, &m); /* pushes the chunk or nil */
    lua_pushvalue(L, first);      /* normalized below, the rest stays */
    first += 2;
  }
  normalize_results(L, first);
  int isint;
  lua_Integer status = lua_tointegerx(L, first, &isint);
  if (!isint || status < 100 || status > 599)
    luaL_error(L, "status must be an integer from 100 to 599");
  int bt = lua_type(L, first + 1);
  if (bt != LUA_TNIL && bt != LUA_TSTRING)
    luaL_error(L, "body must be a string, got %s", luaL_typename(L, first + 1));
  int ht = lua_type(L, first + 2);
  if (ht != LUA_TNIL && ht != LUA_TTABLE)
    luaL_error(L, "headers must be a table, got %s",
               luaL_typename(L, first + 2));
  if (ht == LUA_TTABLE)
    put_user_headers(L, first + 2, out);
  size_t blen = 0;
  const char *body =
      bt == LUA_TSTRING ? lua_tolstring(L, first + 1, &blen) : "";
  if (status < 200)
    c->close_after = 1; /* an interim status cannot end an exchange */
  out->status = (int)status;
  out->abort = m.abort;
  if (m.count > (UINT64_MAX / 4 - blen) / (m.chunk_len ? m.chunk_len : 1))
    luaL_error(L, "'body_repeat' makes the body too long");
  uint64_t total = blen + m.count * m.chunk_len; /* Content-Length */
  uint64_t to_send = m.cut && m.cut_at < total ? m.cut_at : total;
  if (!status_has_body((int)status) || c->head)
    to_send = 0;
  size_t first_part = to_send < blen ? (size_t)to_send : blen;
  if (put_head(&out->buf, c, (int)status, total) != 0 ||
      buf_append(&out->buf, out->user.data, out->user.len) != 0 ||
      put_body(&out->buf, c, (int)status, body, first_part) != 0)
    luaL_error(L, "out of memory");
  if (m.cut)
    c->close_after = 1; /* after the bytes sent: the rest never comes */
  if (!m.abort && to_send > first_part)
    stream_prepare(L, c, &m, to_send - first_part);
}

/* A 500 for a handler that failed. */
static void build_failure(lua_State *L, hs_out *out) {
  out->status = 500;
  if (format_simple(&out->buf, out->conn, 500) != 0)
    luaL_error(L, "out of memory");
}

/* Protected: [1] hs_out, [2] the handler task ended (join's first value),
 * [3] the handler did not raise (xpcall's first value) or the reason it
 * was stopped, [4] its first result or error, and so on. */
static int l_build(lua_State *L) {
  hs_out *out = lua_touserdata(L, 1);
  const char *desc = out->conn->desc;
  if (!lua_toboolean(L, 2)) {
    host_log(LOG_ERROR, "http: the handler for %s was stopped: %s", desc,
             errmsg(L, 3));
    build_failure(L, out);
  } else if (!lua_toboolean(L, 3)) {
    host_log(LOG_ERROR, "http: the handler for %s failed: %s", desc,
             errmsg(L, 4));
    build_failure(L, out);
  } else {
    build_reply(L, 4, out);
  }
  return 0;
}

/* Called by the request task with the token and what join() returned. */
static void respond_on(lua_State *L, hs_conn *c) {
  hs_out out = {.conn = c};
  lua_pushcfunction(L, l_build);
  lua_replace(L, 1); /* in place of the token */
  lua_pushlightuserdata(L, &out);
  lua_insert(L, 2);
  if (lua_pcall(L, lua_gettop(L) - 1, 0, 0) != LUA_OK) {
    host_log(LOG_ERROR, "http: bad response from the handler for %s: %s",
             c->desc, errmsg(L, -1));
    out.buf.len = 0;
    out.status = 500;
    out.abort = 0;
    if (format_simple(&out.buf, c, 500) != 0)
      conn_close(c);
  }
  if (out.abort) {
    host_log(LOG_DEBUG, "http: %s %s -> reset (abort)", c->peer, c->desc);
    conn_abort(c);
  } else {
    host_log(LOG_DEBUG, "http: %s %s -> %d", c->peer, c->desc, out.status);
    int kind = c->stream_left > 0 ? W_STREAM : W_LAST;
    if (!c->closing && conn_write(c, &out.buf, kind) != 0)
      conn_close(c);
  }
  buf_free(&out.buf);
  buf_free(&out.user);
}

static int l_respond(lua_State *L) {
  hs_token *tok = luaL_checkudata(L, 1, TOKEN_MT);
  hs_conn *c = tok->conn;
  if (!c || tok->done)
    return 0;
  tok->done = 1;
  if (!c->closing && !c->ctx->closing)
    respond_on(L, c); /* else the client or the server went away */
  conn_unref(c);
  return 0;
}

/* A request task that vanished without responding (the host is closing). */
static int l_token_gc(lua_State *L) {
  hs_token *tok = lua_touserdata(L, 1);
  if (tok->conn && !tok->done) {
    tok->done = 1;
    conn_close(tok->conn);
    conn_unref(tok->conn);
  }
  return 0;
}

/* spawn(name, fn, ...): task_spawn for the responder chunk. */
static int l_spawn_named(lua_State *L) {
  char name[64];
  snprintf(name, sizeof name, "%s", luaL_checkstring(L, 1));
  lua_remove(L, 1);
  task_spawn(L, lua_gettop(L) - 1, name);
  return 1;
}

/* What each request task runs. The handler gets a task of its own, so that
 * even when it is stopped by the watchdog (which pcall cannot catch) the
 * request task still answers. */
static const char responder_src[] =
    "local spawn, respond, xpcall, traceback = ...\n"
    "return function(handler, req, token, name)\n"
    "  local t = spawn(name, function()\n"
    "    return xpcall(handler, traceback, req)\n"
    "  end)\n"
    "  respond(token, t:join())\n"
    "end\n";

/* ---- starting a request ---- */

/* Protected: start the request task for the request of conn [1]. */
static int l_dispatch(lua_State *L) {
  hs_conn *c = lua_touserdata(L, 1);
  hs_registry *reg = c->srv->reg;
  lua_rawgeti(L, LUA_REGISTRYINDEX, reg->responder_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, c->srv->handler_ref);
  push_request(L, c);
  hs_token *tok = lua_newuserdatauv(L, sizeof *tok, 0);
  tok->conn = NULL;
  tok->done = 0;
  luaL_setmetatable(L, TOKEN_MT);
  lua_pushfstring(L, "http %s", c->desc);
  task_spawn(L, 4, "http request");
  tok->conn = c; /* nothing can fail any more */
  c->refs++;
  return 0;
}

static void describe(hs_conn *c) {
  const hs_request *r = &c->parse.req;
  int n = r->url.len > 120 ? 120 : (int)r->url.len;
  snprintf(c->desc, sizeof c->desc, "%s %.*s",
           http_method_str((enum http_method)r->method), n,
           n ? r->url.data : "");
}

/* Start the request task for the request of c; 0 when it cannot. */
static int start_handler(hs_conn *c) {
  lua_State *L = c->ctx->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, l_dispatch);
  lua_pushlightuserdata(L, c);
  int rc = lua_pcall(L, 1, 0, 0);
  if (rc != LUA_OK)
    host_log(LOG_ERROR, "http: cannot start the handler for %s: %s", c->desc,
             errmsg(L, -1));
  lua_settop(L, top);
  return rc == LUA_OK;
}

/* A whole request is parsed: hand it to the handler. */
static void conn_dispatch(hs_conn *c) {
  const hs_request *r = &c->parse.req;
  host_ctx *ctx = c->ctx;
  c->busy = 1;
  conn_stop_reading(c);
  uv_timer_stop(c->timer);
  c->close_after = !r->keep_alive;
  c->head = r->method == HTTP_HEAD;
  c->http10 = r->http_major == 1 && r->http_minor == 0;
  describe(c);
  if (ctx->closing || !c->srv) {
    conn_close(c);
    return;
  }
  int err = spool_close(c); /* the body is complete: the handler's now */
  if (err != 0) {
    conn_reply_error(c, spool_failed(c, err));
    return;
  }
  int started = start_handler(c);
  parse_next(&c->parse);
  if (!started)
    conn_reply_error(c, 503);
}

/* ======================================================================
 * Lua: the server object
 * ====================================================================== */

static void free_handle(uv_handle_t *h) {
  free(h);
}

static void srv_free(hs_server *srv) {
  free(srv->spool_dir);
  free(srv);
}

static void srv_unref(hs_server *srv) {
  if (--srv->refs == 0)
    srv_free(srv);
}

static void on_listener_closed(uv_handle_t *h) {
  hs_server *srv = h->data;
  free(h);
  srv_unref(srv);
}

/* Stop listening and close every connection (idempotent). Handlers still
 * running finish; their responses are dropped. */
static void server_close(hs_server *srv) {
  if (srv->closed)
    return;
  srv->closed = 1;
  if (srv->prev)
    srv->prev->next = srv->next;
  else
    srv->reg->servers = srv->next;
  if (srv->next)
    srv->next->prev = srv->prev;
  srv->prev = srv->next = NULL;
  uv_close((uv_handle_t *)srv->tcp, on_listener_closed);
  while (srv->conns)
    conn_close(srv->conns);
  if (!srv->ctx->closing) {
    luaL_unref(srv->ctx->L, LUA_REGISTRYINDEX, srv->handler_ref);
    luaL_unref(srv->ctx->L, LUA_REGISTRYINDEX, srv->self_ref);
  }
  srv->handler_ref = srv->self_ref = LUA_NOREF;
}

/* "ip:port" (or "[ip]:port") of addr into out (ADDR_NAME_SIZE bytes are
 * always enough); 0 on success, -1 if addr has no name or out is too
 * small. */
static int addr_name(const struct sockaddr_storage *ss, char *out, size_t size,
                     int *port) {
  char ip[INET6_ADDRSTRLEN];
  int n = -1;
  if (ss->ss_family == AF_INET6) {
    const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
    if (uv_ip6_name(a, ip, sizeof ip) != 0)
      return -1;
    *port = ntohs(a->sin6_port);
    n = snprintf(out, size, "[%s]:%d", ip, *port);
  } else if (ss->ss_family == AF_INET) {
    const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
    if (uv_ip4_name(a, ip, sizeof ip) != 0)
      return -1;
    *port = ntohs(a->sin_port);
    n = snprintf(out, size, "%s:%d", ip, *port);
  }
  return n >= 0 && (size_t)n < size ? 0 : -1;
}

static void peer_name(uv_tcp_t *tcp, char *out, size_t size) {
  struct sockaddr_storage ss;
  int len = sizeof ss, port;
  if (uv_tcp_getpeername(tcp, (struct sockaddr *)&ss, &len) != 0 ||
      addr_name(&ss, out, size, &port) != 0)
    snprintf(out, size, "?");
}

static hs_conn *conn_new(hs_server *srv, uv_tcp_t *tcp, uv_timer_t *timer) {
  hs_conn *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  c->ctx = srv->ctx;
  c->tcp = tcp;
  c->timer = timer;
  c->refs = 2; /* the socket and the timer */
  tcp->data = c;
  timer->data = c;
  c->spool_fd = -1;
  parse_init(&c->parse, srv->max_body);
  if (srv->spool_dir) {
    c->parse.spool = spool_write;
    c->parse.spool_ud = c;
    c->parse.spool_over = srv->spool_over;
  }
  peer_name(tcp, c->peer, sizeof c->peer);
  snprintf(c->desc, sizeof c->desc, "-");
  c->srv = srv;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  return c;
}

static void on_connection(uv_stream_t *server, int status) {
  hs_server *srv = server->data;
  uv_loop_t *loop = &srv->ctx->loop;
  if (status < 0) {
    host_log(LOG_WARN, "http: %s: %s", srv->where, uv_strerror(status));
    return;
  }
  uv_tcp_t *tcp = malloc(sizeof *tcp);
  uv_timer_t *timer = malloc(sizeof *timer);
  if (!tcp || !timer || uv_tcp_init(loop, tcp) != 0) {
    free(tcp);
    free(timer);
    host_log(LOG_ERROR, "http: %s: out of memory", srv->where);
    return;
  }
  hs_conn *c = NULL;
  if (uv_accept(server, (uv_stream_t *)tcp) != 0 ||
      uv_timer_init(loop, timer) != 0 || !(c = conn_new(srv, tcp, timer))) {
    uv_close((uv_handle_t *)tcp, free_handle);
    free(timer); /* never started: uv_timer_init only fails on bad args */
    return;
  }
  if (srv->nconns > MAX_CONNS) {
    host_log(LOG_WARN, "http: %s: too many connections; closing %s", srv->where,
             c->peer);
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(tcp, 1);
  conn_start_reading(c);
  timer_start(c, IDLE_MS);
}

static hs_server *check_server(lua_State *L) {
  hs_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (!*ud)
    luaL_error(L, "the server object was collected");
  return *ud;
}

/* server:port() */
static int l_port(lua_State *L) {
  lua_pushinteger(L, check_server(L)->port);
  return 1;
}

/* server:close(), also __close: idempotent. */
static int l_close(lua_State *L) {
  hs_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud)
    server_close(*ud);
  return 0;
}

static int l_gc(lua_State *L) {
  hs_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud) {
    server_close(*ud);
    srv_unref(*ud);
    *ud = NULL;
  }
  return 0;
}

static int l_tostring(lua_State *L) {
  hs_server **ud = luaL_checkudata(L, 1, SERVER_MT);
  if (*ud)
    lua_pushfstring(L, "http server %s%s", (*ud)->where,
                    (*ud)->closed ? " (closed)" : "");
  else
    lua_pushliteral(L, "http server (collected)");
  return 1;
}

/* The socket address of host:port; 0 or a libuv error. */
static int parse_addr(const char *host, int port, struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof *ss);
  if (strcmp(host, "localhost") == 0)
    host = "127.0.0.1";
  if (!strchr(host, ':'))
    return uv_ip4_addr(host, port, (struct sockaddr_in *)ss);
  char ip[64];
  size_t n = strlen(host);
  if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof ip) {
    memcpy(ip, host + 1, n - 2); /* "[::1]" */
    ip[n - 2] = '\0';
    host = ip;
  }
  return uv_ip6_addr(host, port, (struct sockaddr_in6 *)ss);
}

/* Bind and listen; fills srv->port and srv->where. 0 or a libuv error. */
static int server_listen(hs_server *srv, const struct sockaddr_storage *ss) {
  int rc = uv_tcp_bind(srv->tcp, (const struct sockaddr *)ss, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)srv->tcp, BACKLOG, on_connection);
  if (rc != 0)
    return rc;
  struct sockaddr_storage bound;
  int len = sizeof bound;
  rc = uv_tcp_getsockname(srv->tcp, (struct sockaddr *)&bound, &len);
  if (rc == 0 &&
      addr_name(&bound, srv->where, sizeof srv->where, &srv->port) != 0)
    rc = UV_EINVAL;
  return rc;
}

typedef struct serve_opts {
  const char *host;
  int port;
  size_t max_body;
  const char *spool_dir; /* NULL: no spooling */
  size_t spool_over;
} serve_opts;

/* A number of bytes option: at most 1e15, the default when absent. */
static size_t opt_bytes(lua_State *L, const char *field, double def) {
  double v = host_opt_number(L, 1, field, def);
  if (!(v >= 0 && v <= 1e15))
    luaL_argerror(L, 1,
                  lua_pushfstring(L,
                                  "option '%s' must be a number of "
                                  "bytes >= 0",
                                  field));
  return (size_t)v;
}

static void check_serve_args(lua_State *L, serve_opts *o) {
  if (lua_type(L, 1) == LUA_TFUNCTION && lua_isnone(L, 2)) {
    lua_pushnil(L); /* serve(handler) */
    lua_insert(L, 1);
  }
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  o->host = host_opt_string(L, 1, "host", "127.0.0.1");
  double port = host_opt_number(L, 1, "port", 0);
  luaL_argcheck(L, port >= 0 && port <= 65535 && port == (double)(int)port, 1,
                "option 'port' must be an integer from 0 to 65535");
  o->port = (int)port;
  o->max_body = opt_bytes(L, "max_body", HTTP_SERVER_MAX_BODY);
  o->spool_dir = host_opt_string(L, 1, "spool_dir", NULL);
  luaL_argcheck(L, !o->spool_dir || *o->spool_dir, 1,
                "option 'spool_dir' must not be empty");
  o->spool_over = opt_bytes(L, "spool_over", HTTP_SERVER_SPOOL_OVER);
  lua_settop(L, 2);
}

/* The server for o, its socket initialized but not bound; NULL when out of
 * memory. */
static hs_server *server_new(host_ctx *ctx, hs_registry *reg,
                             const serve_opts *o) {
  hs_server *srv = calloc(1, sizeof *srv);
  uv_tcp_t *tcp = malloc(sizeof *tcp);
  char *dir = o->spool_dir ? host_strdup(o->spool_dir) : NULL;
  if (!srv || !tcp || (o->spool_dir && !dir) ||
      uv_tcp_init(&ctx->loop, tcp) != 0) {
    free(srv);
    free(tcp);
    free(dir);
    return NULL;
  }
  srv->ctx = ctx;
  srv->reg = reg;
  srv->tcp = tcp;
  srv->max_body = o->max_body;
  srv->spool_dir = dir;
  srv->spool_over = o->spool_over;
  tcp->data = srv;
  snprintf(srv->where, sizeof srv->where,
           strchr(o->host, ':') && o->host[0] != '[' ? "[%s]:%d" : "%s:%d",
           o->host, o->port);
  return srv;
}

/* host.http.serve(opts, handler) -> server, or nil, msg, code */
static int l_serve(lua_State *L) {
  hs_registry *reg = lua_touserdata(L, lua_upvalueindex(1));
  host_ctx *ctx = host_get(L);
  serve_opts o;
  check_serve_args(L, &o);
  if (ctx->closing)
    return host_fail(L, "closing", "http.serve: the host is shutting down");
  struct sockaddr_storage ss;
  int rc = parse_addr(o.host, o.port, &ss);
  if (rc != 0)
    return host_fail(L, uv_err_name(rc),
                     "http.serve: '%s' is not an IP "
                     "address",
                     o.host);
  rc = o.spool_dir ? host_fs_check_dir(o.spool_dir) : 0;
  if (rc != 0)
    return host_fail_uv(L, rc, "http.serve: spool_dir");
  hs_server **ud = lua_newuserdatauv(L, sizeof *ud, 0);
  *ud = NULL;
  luaL_setmetatable(L, SERVER_MT);
  hs_server *srv = server_new(ctx, reg, &o);
  if (!srv)
    return luaL_error(L, "http.serve: out of memory");
  rc = server_listen(srv, &ss);
  if (rc != 0) {
    char what[128];
    snprintf(what, sizeof what, "http.serve: listen on %s", srv->where);
    uv_close((uv_handle_t *)srv->tcp, free_handle);
    srv_free(srv);
    return host_fail_uv(L, rc, what);
  }
  lua_pushvalue(L, 2);
  srv->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, 3);
  srv->self_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  srv->refs = 2; /* this object and the listening socket */
  srv->next = reg->servers;
  if (reg->servers)
    reg->servers->prev = srv;
  reg->servers = srv;
  *ud = srv;
  lua_settop(L, 3); /* the server object */
  return 1;
}

/* At shutdown (ctx->closing is set): close every server, without Lua. */
static void on_host_close(void *data) {
  hs_registry *reg = data;
  while (reg->servers)
    server_close(reg->servers);
  free(reg);
}

static void make_metatables(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"port", l_port}, {"close", l_close}, {NULL, NULL}};
  luaL_newmetatable(L, SERVER_MT);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, l_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, l_close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, l_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  luaL_newmetatable(L, TOKEN_MT);
  lua_pushcfunction(L, l_token_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
}

/* The function every request task runs (see responder_src). */
static int make_responder(lua_State *L) {
  if (luaL_loadbuffer(L, responder_src, sizeof responder_src - 1,
                      "=[http server]") != LUA_OK)
    lua_error(L);
  lua_pushcfunction(L, l_spawn_named);
  lua_pushcfunction(L, l_respond);
  lua_getglobal(L, "xpcall");
  lua_getglobal(L, "debug");
  lua_getfield(L, -1, "traceback");
  lua_remove(L, -2);
  lua_call(L, 4, 1);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

void host_open_http_server(lua_State *L) {
  hs_registry *reg = calloc(1, sizeof *reg);
  if (!reg) {
    luaL_error(L, "out of memory");
    return;
  }
  reg->responder_ref = make_responder(L);
  host_on_close(host_get(L), on_host_close, reg);
  make_metatables(L);
  if (lua_getfield(L, -1, "http") != LUA_TTABLE) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, "http");
  }
  lua_pushlightuserdata(L, reg);
  lua_pushcclosure(L, l_serve, 1);
  lua_setfield(L, -2, "serve");
  lua_pop(L, 1);
}

#endif /* HTTP_SERVER_PARSE_ONLY */
