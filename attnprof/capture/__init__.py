"""Capture: run a script unchanged, wrap its attention calls, profile a window of steps, write a run folder.

`attnprof.capture.session.trace_script` is the entry point (imports torch; this package itself does not).
"""
