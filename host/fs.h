/* fs.h: what other bindings use of fs.c. */
#ifndef GOLIAT_FS_H
#define GOLIAT_FS_H

#include <stddef.h>

/* Write all of data to the file descriptor fd (from uv_fs_open), blocking;
 * returns 0 or a libuv error. */
int host_fs_write_all(int fd, const char *data, size_t len);

/* 0 when path is a directory (links followed), else a libuv error
 * (UV_ENOTDIR when it is something else). */
int host_fs_check_dir(const char *path);

#endif
