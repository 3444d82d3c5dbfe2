/* lua_utf8.h: force-included (gcc -include) into every source of the
 * Windows build of Lua 5.4 by host/windows/build.sh, so that Lua's own file
 * and environment functions take UTF-8 like the rest of goliat-host: the C
 * runtime's fopen, remove, getenv, ... use the ANSI code page on Windows,
 * which cannot spell most non-ASCII paths. Affects io.open, io.lines,
 * loadfile, dofile, require, os.remove, os.rename, os.getenv, os.execute
 * and io.popen. A string that is not valid UTF-8 is passed to the ANSI
 * function unchanged. Not used on POSIX. */
#ifndef GOLIAT_LUA_UTF8_H
#define GOLIAT_LUA_UTF8_H

#include <stdio.h>
#include <stdlib.h>

FILE *goliat_utf8_fopen(const char *path, const char *mode);
FILE *goliat_utf8_freopen(const char *path, const char *mode, FILE *f);
int goliat_utf8_remove(const char *path);
int goliat_utf8_rename(const char *from, const char *to);
char *goliat_utf8_getenv(const char *name);
int goliat_utf8_system(const char *cmd);
FILE *goliat_utf8_popen(const char *cmd, const char *mode);

#define fopen goliat_utf8_fopen
#define freopen goliat_utf8_freopen
#define remove goliat_utf8_remove
#define rename goliat_utf8_rename
#define getenv goliat_utf8_getenv
#define system goliat_utf8_system
#define _popen goliat_utf8_popen

#endif
