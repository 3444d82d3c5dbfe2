/* log.h: leveled, timestamped lines on stderr. */
#ifndef GOLIAT_LOG_H
#define GOLIAT_LOG_H

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Set the lowest level written; returns the previous one. */
int host_log_set_level(int level);

/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int host_log_parse_level(const char *name);

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
