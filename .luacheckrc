-- luacheck configuration: plain Lua 5.x everywhere, busted in the specs.
std = "max"
max_line_length = 100
files["spec"] = { std = "+busted" }
