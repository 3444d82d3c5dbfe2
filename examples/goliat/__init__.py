"""Stand-in for GOLIAT, for development and tests of the worker agent.

`python -m goliat study CONFIG` reads the split config, posts a few GUI
updates (as GOLIAT's web bridge does: best effort, no retries) and exits
with the code the config asks for. At the end of every run it sends what
GOLIAT sends (PROTOCOL.md section 6; goliat/cli/run_study.py,
goliat/gui/components/queue_handler.py, goliat/gui/progress_gui.py,
goliat/gui/components/web_bridge_manager.py):

  exit code 0   {"type": "finished", "exit_code": 0}, then the window's
                {"type": "finished", "message": "Study finished successfully"}
  exit code 42  {"type": "memory_error", "message": "Memory/allocation error
                detected", "exit_code": 42}, then {"type": "finished",
                "exit_code": 42} and {"type": "finished", "message": "Study
                finished with errors"}
  any other N   {"type": "fatal_error", "message": "Process exited with code
                N"}, then {"type": "finished", "exit_code": N} and
                {"type": "finished", "message": "Study finished with errors"}

preceded, for a non-zero code, by GOLIAT's log line ("--- Process exited
with code N ---", or "--- Memory/allocation error detected (exit code 42)
---") as a `status` message (a log_batch line with "bridge").

Where it posts: GOLIAT_MONITORING_URL under GOLIAT_MACHINE_ID, unless the
config says otherwise (dashboard_url, machine_id below); only when
GOLIAT_WEBGUI_ENABLED=true. It posts with the `requests` library, as GOLIAT
does, when it can be imported, else with urllib.

Config fields, all optional:

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
                 (the GOLIAT_MACHINE_ID the study was given)
  starts_file    append "<assignment id> <machine id> <pid>" there when a
                 run starts (runs_file says how runs ended; a run stopped
                 before its end shows here only)
  post_finished  send the end-of-run messages above (default true, as
                 GOLIAT does after every run, errors included; false
                 imitates a crash: none of them is sent)
  drop_queue_end true: send only what GOLIAT's window really gets out: it
                 handles a queue message before forwarding it, and handling
                 the queue's finished or fatal_error stops its bridge, so
                 those two are dropped; left are memory_error (42) and the
                 window's own finished (default false: all of the above)
  dashboard_url  post everything (progress, logs, heartbeats, the results
                 upload, the end-of-run messages) to this base URL, e.g.
                 "http://127.0.0.1:8080", whatever GOLIAT_MONITORING_URL
                 says: GOLIAT's window posts to the dashboard URL written
                 into its code and never reads the variable
  status_file    at the start, append the stored status of the run's
                 assignment there, as the development dashboard at
                 probe_url (its base URL) shows it
  machine_id     post under this machine id instead of GOLIAT_MACHINE_ID
                 (GOLIAT finds its id itself: public IP, local address or
                 host name; it never reads GOLIAT_MACHINE_ID)
  bridge         true: send like GOLIAT's web bridge instead (progress up to
                 50 Hz, log batches every 50 ms or 10 lines, a heartbeat
                 every 30 s, no retries), for duration_s, with:
    log_lines    log lines over the run (default 100)
    steps        progress values over the run (default 100)
    results_bytes  upload a result file of this size at the end (multipart,
                 POST /api/assignments/<id>/results)
    record_file  append one JSON line per message sent: its kind (the
                 message type), the status it got (null: no answer), the
                 log lines or value (the end-of-run messages: message and
                 exit_code); the result upload's body goes to
                 record_file + ".results"
"""
