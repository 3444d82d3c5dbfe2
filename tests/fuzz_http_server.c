/* fuzz_http_server.c: libFuzzer target for the request parser behind
 * host.http.serve (host/http_server.c built with -DHTTP_SERVER_PARSE_ONLY,
 * so only http_parser is linked: no Lua, no libuv, no sockets).
 *
 * The input is the bytes a client sent on one connection. They are parsed
 * all at once and then again split into small pieces, as a slow client or
 * a fragmented TCP stream would deliver them. Besides what AddressSanitizer
 * and UBSan catch, the target checks that
 *  - the status is one the server can reply (0, 400, 413, 414, 431, 503);
 *  - how the bytes are split does not change the outcome: the same number
 *    of complete requests, and an error in one case is an error in the
 *    other. Which error may differ: a limit is checked when http_parser
 *    hands over a piece of a header name, which it does at the end of each
 *    buffer, so 101 headers where the last name has a bad byte give 431
 *    byte by byte but 400 at once (the bad byte is seen first);
 *  - spooling bodies (spool_dir) changes nothing of that either.
 *
 * Build and run: bash tests/fuzz.sh [seconds] (CMake option GOLIAT_FUZZ).
 */
#include "http_server.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static void check_status(int status) {
  switch (status) {
  case 0:
  case 400:
  case 413:
  case 414:
  case 431:
  case 503:
    return;
  default:
    fprintf(stderr, "unexpected status %d\n", status);
    abort();
  }
}

/* A spool (host.http.serve's spool_dir) must not change what is parsed:
 * bodies spooled from their first byte, or from a size that depends on the
 * input (then a chunked body starts in memory and moves to the spool); all
 * at once the status is the very same, in pieces only as errors or not. */
static void check_spooled(const char *s, size_t size, int whole,
                          int whole_status) {
  size_t overs[2] = {0, size % 1024};
  size_t pieces[2] = {0, 7};
  for (size_t i = 0; i < 2; i++)
    for (size_t j = 0; j < 2; j++) {
      int status = -1;
      int count =
          http_server_parse_spooled(s, size, pieces[j], overs[i], &status);
      check_status(status);
      int same = pieces[j] ? !status == !whole_status : status == whole_status;
      if (count != whole || !same) {
        fprintf(stderr,
                "spooled over %zu bytes, in pieces of %zu: %d requests, "
                "status %d; in memory: %d requests, status %d\n",
                overs[i], pieces[j], count, status, whole, whole_status);
        abort();
      }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *s = (const char *)data;
  int whole_status = -1;
  int whole = http_server_parse_pieces(s, size, 0, &whole_status);
  check_status(whole_status);
  if (whole < 0) {
    fprintf(stderr, "negative request count %d\n", whole);
    abort();
  }
  /* the simple entry point must agree with the detailed one */
  if (http_server_parse_for_fuzz(s, size) != whole) {
    fprintf(stderr, "http_server_parse_for_fuzz disagrees\n");
    abort();
  }

  /* Byte by byte only for short inputs (it costs one http_parser call per
   * byte); a piece size that depends on the input for the others. */
  size_t pieces[3];
  size_t n = 0;
  if (size <= 4096)
    pieces[n++] = 1;
  pieces[n++] = 7;
  pieces[n++] = 2 + size % 61;
  for (size_t i = 0; i < n; i++) {
    int status = -1;
    int count = http_server_parse_pieces(s, size, pieces[i], &status);
    check_status(status);
    if (count != whole || !status != !whole_status) {
      fprintf(stderr,
              "pieces of %zu bytes: %d requests, status %d; "
              "all at once: %d requests, status %d\n",
              pieces[i], count, status, whole, whole_status);
      abort();
    }
  }
  check_spooled(s, size, whole, whole_status);
  return 0;
}
