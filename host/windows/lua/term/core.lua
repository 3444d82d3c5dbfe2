-- Stand-in for lua-term's C module `term.core`, for busted in the Windows
-- zip and under wine (see ../system/core.lua): busted asks only isatty, to
-- choose colours; plain output it is (the console's code page may not show
-- busted's UTF-8 marks).
return {
  isatty = function()
    return false
  end,
}
