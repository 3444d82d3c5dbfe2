/* fuzz_http_client.c: libFuzzer target for what host.http.request does
 * with the response headers a server sends: on_header() (status lines
 * reset the set, "name: value" lines are stored with the name lower-cased
 * and trimmed at its end and the value trimmed (a line starting with
 * whitespace, an obsolete folded line, is ignored), 1 MiB cap on all of them)
 * and push_headers() (the Lua table, repeated headers joined with ", ").
 *
 * Those functions are static in host/http_client.c, which this file
 * includes as it is, so the real code is fuzzed without a seam in it and
 * without curl doing any transfer: the input is split into lines at '\n'
 * and each line is handed to on_header() as curl's header callback would
 * get it. A line with a NUL byte stops the "transfer" there, because curl
 * fails it before the callback (Debian 12's 7.88: "Weird server reply: Nul
 * byte in header"): push_headers() walks the stored names and values with
 * strlen() and relies on that.
 *
 * The result is compared with a small reference model written in Lua
 * (CHECKER below): same table, same "too_large" outcome. For an input whose
 * first byte is 0x7f, the stored headers start out holding one header
 * ("x-prefill") that leaves about size / 2 bytes below the 1 MiB cap, so
 * that the cap is reached by a short input.
 *
 * push_headers() joins a repeated header with one lua_concat per
 * repetition, in time quadratic in their count: 21845 lines "a:" (64 KiB)
 * take about 1 s here. Not a crash; libFuzzer lists such inputs as slow.
 *
 * Build and run: bash tests/fuzz.sh [seconds] (CMake option GOLIAT_FUZZ).
 */
#include "http_client.c"

#include <lualib.h>

static const char CHECKER[] =
    "local got, input, prefill, max = ...\n"
    "local function trim(v)\n"
    "  local first = v:find('[^ \\t\\r\\n]')\n"
    "  if not first then return '' end\n"
    "  return v:sub(first):match('^.*[^ \\t\\r\\n]')\n"
    "end\n"
    "local exp, total, outcome = {}, 0, 'ok'\n"
    "if prefill then\n"
    "  exp['x-prefill'] = { prefill }\n"
    "  total = #'x-prefill' + #prefill + 2\n"
    "end\n"
    "do\n"
    "  local pos = 1\n"
    "  while pos <= #input do\n"
    "    local nl = input:find('\\n', pos, true)\n"
    "    local line = input:sub(pos, nl or #input)\n"
    "    pos = (nl or #input) + 1\n"
    "    if line:find('\\0', 1, true) then outcome = 'nul' goto done end\n"
    "    if line:sub(1, 5) == 'HTTP/' then\n"
    "      exp, total = {}, 0\n"
    "    else\n"
    "      local c = line:find(':', 1, true)\n"
    "      local folded = line:find('^[ \\t\\r\\n]')\n"
    "      if c and c > 1 and not folded then\n"
    "        local name = (line:sub(1, c - 1):gsub('[ \\t\\r\\n]+$', ''))\n"
    "        name = name:lower()\n"
    "        local value = trim(line:sub(c + 1))\n"
    "        total = total + #name + #value + 2\n"
    "        if total > max then outcome = 'too_large' goto done end\n"
    "        local list = exp[name] or {}\n"
    "        exp[name] = list\n"
    "        list[#list + 1] = value\n"
    "      end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "::done::\n"
    "if type(got) == 'string' or outcome ~= 'ok' then\n"
    "  if got ~= outcome then\n"
    "    error(('outcome %s, expected %s'):format(tostring(got), outcome))\n"
    "  end\n"
    "  return\n"
    "end\n"
    "for k, list in pairs(exp) do\n"
    "  local v = table.concat(list, ', ')\n"
    "  if got[k] ~= v then\n"
    "    error(('header %q: got %q, expected %q'):format(k, tostring(got[k]),"
    " v))\n"
    "  end\n"
    "end\n"
    "for k in pairs(got) do\n"
    "  if exp[k] == nil then error(('unexpected header %q'):format(k)) end\n"
    "end\n";

/* A fresh Lua state for each input: nothing outlives the input, so
 * libFuzzer's leak check has nothing to look at. */
static lua_State *new_checker(void) {
  lua_State *L = luaL_newstate();
  if (!L)
    abort();
  luaL_openlibs(L);
  if (luaL_loadstring(L, CHECKER) != LUA_OK) {
    fprintf(stderr, "checker: %s\n", lua_tostring(L, -1));
    abort();
  }
  return L;
}

/* Hand the lines of data to on_header(); returns "ok", "nul" (a line with
 * a NUL byte: curl fails the transfer) or "too_large". */
static const char *feed(http_req *req, const uint8_t *data, size_t size) {
  size_t pos = 0;
  while (pos < size) {
    const uint8_t *nl = memchr(data + pos, '\n', size - pos);
    size_t len = nl ? (size_t)(nl - (data + pos)) + 1 : size - pos;
    if (memchr(data + pos, 0, len))
      return "nul";
    /* a heap copy of exactly the line, so that ASan sees any read past it */
    char *line = malloc(len);
    if (!line)
      abort();
    memcpy(line, data + pos, len);
    size_t used = on_header(line, 1, len, req);
    free(line);
    if (used != len) {
      if (used != 0 || !req->headers_too_large) {
        fprintf(stderr, "on_header: %zu of %zu bytes, too_large %d\n", used,
                len, req->headers_too_large);
        abort();
      }
      return "too_large";
    }
    if (req->hdrs.len > HEADERS_MAX) {
      fprintf(stderr, "%zu bytes of headers stored\n", req->hdrs.len);
      abort();
    }
    pos += len;
  }
  return "ok";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  http_req req;
  memset(&req, 0, sizeof req);
  char *prefill = NULL;
  size_t prefill_len = 0;
  if (size > 0 && data[0] == 0x7f) {
    static const char name[] = "x-prefill";
    prefill_len = HEADERS_MAX - size / 2 - sizeof name - 1;
    prefill = malloc(prefill_len + 1);
    if (!prefill || !buf_append(&req.hdrs, name, sizeof name, HEADERS_MAX))
      abort();
    memset(prefill, 'p', prefill_len);
    prefill[prefill_len] = '\0';
    if (!buf_append(&req.hdrs, prefill, prefill_len + 1, HEADERS_MAX))
      abort();
  }
  const char *outcome = feed(&req, data, size);

  lua_State *L = new_checker(); /* the checker is at the top */
  if (strcmp(outcome, "ok") == 0)
    push_headers(L, &req.hdrs); /* what a script would get */
  else
    lua_pushstring(L, outcome);
  lua_pushlstring(L, (const char *)data, size);
  if (prefill)
    lua_pushlstring(L, prefill, prefill_len);
  else
    lua_pushnil(L);
  lua_pushinteger(L, HEADERS_MAX);
  if (lua_pcall(L, 4, 0, 0) != LUA_OK) {
    fprintf(stderr, "mismatch with the reference model: %s\n",
            lua_tostring(L, -1));
    abort();
  }
  lua_close(L);
  free(prefill);
  buf_free(&req.hdrs);
  return 0;
}
