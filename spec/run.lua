-- Runs the busted spec suite inside goliat-host, so specs use the real
-- bindings: goliat-host spec/run.lua [busted options] [spec files]
local host = require "host"
host.task.set_limit(120) -- policy specs run long stretches without yielding
require "busted.runner" ({ standalone = false })
