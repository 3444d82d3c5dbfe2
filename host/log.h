/* log.h: leveled, timestamped lines on stderr, or in a file rotated by
 * size. */
#ifndef GOLIAT_LOG_H
#define GOLIAT_LOG_H

#include <stdint.h>

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Set the lowest level written; returns the previous one. */
int host_log_set_level(int level);

/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int host_log_parse_level(const char *name);

/* Defaults and bounds of GOLIAT_LOG_MAX_BYTES and GOLIAT_LOG_KEEP. */
#define HOST_LOG_MAX_BYTES 10485760 /* 10 MiB */
#define HOST_LOG_KEEP 5
#define HOST_LOG_KEEP_MAX 100

/* From now on, write the log to the file at path (UTF-8; appended to, and
 * created if missing) instead of stderr. Before a line would take the file
 * past max_bytes, the file is rotated: path.(keep-1) becomes path.keep, ...,
 * path.1 becomes path.2, path becomes path.1, and a new path is started;
 * with keep 0 the file is emptied instead. A device (/dev/null, NUL) is
 * never rotated. When the file cannot be opened or written, the log goes
 * back to stderr, starting with a warning line that says why. Returns 0 or
 * that libuv error. */
int host_log_to_file(const char *path, int64_t max_bytes, int keep);

/* Close the log file (the log goes to stderr again). */
void host_log_close(void);

/* printf-style format checking; mingw's C99 printf is gnu_printf. */
#if defined(__MINGW32__)
#define HOST_PRINTF(f, a) __attribute__((format(gnu_printf, f, a)))
#elif defined(__GNUC__)
#define HOST_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define HOST_PRINTF(f, a)
#endif

HOST_PRINTF(2, 3)
void host_log(int level, const char *fmt, ...);

#endif
