"""Stand-in for GOLIAT, for development and tests of the worker agent.

`python -m goliat study CONFIG` reads the split config, posts a few GUI
updates to GOLIAT_MONITORING_URL (as GOLIAT's web bridge does: no retries)
and exits with the code the config asks for. Config fields, all optional:

  exit_code      exit with this code (default 0)
  duration_s     total run time in seconds (default 1.0)
  steps          progress updates to post (default 3)
  pid_file       write this process's pid there
  child_pid_file start a grandchild (a sleeping python) and write its pid
  child_ignores_sigterm  the grandchild ignores SIGTERM
  detached_pid_file  start a grandchild that leaves the process group and
                 session (setsid), write its pid; it ignores SIGTERM when
                 detached_ignores_sigterm is true
  log_bytes      print this many bytes of output lines before exiting
  ignore_sigterm ignore SIGTERM (so only a kill stops it)
  exit_codes     one exit code per run, e.g. [42, 42, 0]: the runs are
                 counted in count_file (required with it)
  runs_file      append "<assignment id> <machine id> <exit code>" there
  post_finished  post GOLIAT's own `finished` at the end (default true, as
                 GOLIAT does even after errors; false imitates a crash)
  bridge         true: send like GOLIAT's web bridge instead (progress up to
                 50 Hz, log batches every 50 ms or 10 lines, a heartbeat
                 every 30 s, no retries), for duration_s, with:
    log_lines    log lines over the run (default 100)
    steps        progress values over the run (default 100)
    results_bytes  upload a result file of this size at the end (multipart,
                 POST /api/assignments/<id>/results)
    record_file  append one JSON line per message sent: its kind, the
                 status it got (null: no answer), the log lines or value;
                 the result upload's body goes to record_file + ".results"
"""
