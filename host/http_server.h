/* http_server.h: the request parser behind host.http.serve, exposed
 * without sockets and without Lua so that a fuzzer (or a unit test) can
 * drive it alone.
 *
 * Compile host/http_server.c with -DHTTP_SERVER_PARSE_ONLY to get only the
 * parsing half: it then needs nothing but http_parser (no Lua, no libuv).
 */
#ifndef GOLIAT_HTTP_SERVER_H
#define GOLIAT_HTTP_SERVER_H

#include <stddef.h>

/* Limits a connection enforces while parsing one request. */
#define HTTP_SERVER_MAX_URL (8 * 1024)       /* longer gives 414 */
#define HTTP_SERVER_MAX_HEADERS 100          /* more gives 431 */
#define HTTP_SERVER_MAX_BODY (1024 * 1024)   /* default max_body: 413 */
#define HTTP_SERVER_SPOOL_OVER (1024 * 1024) /* default spool_over */

/* Parse data as the bytes a client sent on one connection: requests one
 * after the other, as the server would (stopping at the first error, or
 * after a request that does not keep the connection alive). Returns how
 * many complete requests were parsed. */
int http_server_parse_for_fuzz(const char *data, size_t len);

/* The same, handing the parser at most piece bytes at a time (piece 0
 * means all at once), as a slow client would. When status is not NULL it
 * receives the error status the server would reply (400, 413, 414, 431),
 * or 0 when every byte was accepted. */
int http_server_parse_pieces(const char *data, size_t len, size_t piece,
                             int *status);

/* The same with a spool (host.http.serve's spool_dir) that takes every
 * body larger than spool_over bytes and keeps nothing: a body goes there
 * from its Content-Length, or from the byte that takes it past spool_over.
 * Spooling must not change what is parsed: the count and the status are
 * those of http_server_parse_pieces. */
int http_server_parse_spooled(const char *data, size_t len, size_t piece,
                              size_t spool_over, int *status);

#endif
