/* json.c: host.json: exact JSON text of a part of a JSON document.
 *
 * lua-cjson decodes `[]` and `{}` to the same empty table and prints at most
 * 14 significant digits, so a document decoded and encoded again by it is
 * not the document that was received. host.json.select hands a part of a
 * document on as JSON text instead, through cJSON, which keeps arrays and
 * objects apart, keeps the order of keys and prints every number so that it
 * reads back to the same double. */
#include "host.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>

/* Parses the whole of text (blanks may follow the value) into *root.
 * Returns 0, or pushes nil, message, "EINVAL" and returns 3. */
static int parse_whole(lua_State *L, const char *text, size_t len,
                       cJSON **root) {
  const char *end = NULL;
  *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
  if (!*root) {
    size_t at = end && end >= text ? (size_t)(end - text) : 0;
    return host_fail(L, "EINVAL", "not valid JSON (near byte %zu)", at);
  }
  while (end < text + len &&
         (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
    end++;
  if (end != text + len) {
    cJSON_Delete(*root);
    *root = NULL;
    return host_fail(L, "EINVAL", "not valid JSON (more after byte %zu)",
                     (size_t)(end - text));
  }
  return 0;
}

/* Pushes node's compact JSON text; frees root. */
static int push_printed(lua_State *L, cJSON *root, const cJSON *node) {
  char *out = cJSON_PrintUnformatted(node);
  cJSON_Delete(root);
  if (!out)
    return luaL_error(L, "out of memory");
  lua_pushstring(L, out);
  cJSON_free(out);
  return 1;
}

/* host.json.select(text, key...): the compact JSON text of the value found
 * by following the keys (a string: an object's member; an integer n: the
 * n-th element of an array, from 1), or nil, message, code ("EINVAL": not
 * JSON; "ENOENT": nothing there). */
static int l_select(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  int nkeys = lua_gettop(L) - 1;
  for (int i = 2; i <= nkeys + 1; i++) {
    int t = lua_type(L, i);
    luaL_argcheck(L, t == LUA_TSTRING || lua_isinteger(L, i), i,
                  "a key is a string or an integer");
  }
  cJSON *root;
  int failed = parse_whole(L, text, len, &root);
  if (failed)
    return failed;
  cJSON *node = root;
  for (int i = 2; node && i <= nkeys + 1; i++) {
    if (lua_type(L, i) == LUA_TSTRING) {
      node = cJSON_IsObject(node)
                 ? cJSON_GetObjectItemCaseSensitive(node, lua_tostring(L, i))
                 : NULL;
    } else {
      lua_Integer n = lua_tointeger(L, i);
      node = cJSON_IsArray(node) && n >= 1 && n <= INT32_MAX
                 ? cJSON_GetArrayItem(node, (int)(n - 1))
                 : NULL;
    }
  }
  if (!node) {
    cJSON_Delete(root);
    return host_fail(L, "ENOENT", "no value at that place in the document");
  }
  return push_printed(L, root, node);
}

/* host.json.set_string(text, key, value): the document (a JSON object)
 * with its member `key` set to the string `value`, everything else as it
 * was (order, arrays, numbers), printed compact; or nil, message, code
 * ("EINVAL": not a JSON object; "ENOENT": it has no member `key`). */
static int l_set_string(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *key = luaL_checkstring(L, 2);
  const char *value = luaL_checkstring(L, 3);
  cJSON *root;
  int failed = parse_whole(L, text, len, &root);
  if (failed)
    return failed;
  if (!cJSON_IsObject(root)) {
    cJSON_Delete(root);
    return host_fail(L, "EINVAL", "not a JSON object");
  }
  if (!cJSON_GetObjectItemCaseSensitive(root, key)) {
    cJSON_Delete(root);
    return host_fail(L, "ENOENT", "the object has no member %s", key);
  }
  cJSON *item = cJSON_CreateString(value);
  if (!item || !cJSON_ReplaceItemInObjectCaseSensitive(root, key, item)) {
    cJSON_Delete(item);
    cJSON_Delete(root);
    return luaL_error(L, "out of memory");
  }
  return push_printed(L, root, root);
}

void host_open_json(lua_State *L) {
  static const luaL_Reg funcs[] = {
      {"select", l_select}, {"set_string", l_set_string}, {NULL, NULL}};
  luaL_newlib(L, funcs);
  lua_setfield(L, -2, "json");
}
