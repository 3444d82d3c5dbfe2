/* log.h: leveled, timestamped lines on stderr. */
#ifndef GOLIAT_LOG_H
#define GOLIAT_LOG_H

enum { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Set the lowest level written; returns the previous one. */
int host_log_set_level(int level);

/* Parse "debug", "info", "warn" or "error"; -1 when unknown. */
int host_log_parse_level(const char *name);

#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
void host_log(int level, const char *fmt, ...);

#endif
