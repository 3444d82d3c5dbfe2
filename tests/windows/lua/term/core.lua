-- Stand-in for lua-term's C module `term.core`, for the spec run under
-- wine only (see ../system/core.lua): busted asks only isatty, to choose
-- colours; the suite's output goes to a log, so plain output it is.
return {
  isatty = function()
    return false
  end,
}
