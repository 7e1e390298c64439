"""Chaos tests (issue 10): pyncette under real failures. ``pytest -m chaos`` runs them
alone, in a short form; ``python -m benchmarks chaos`` runs the long form. Results and
how to reproduce them: docs/reliability.md.

Scenarios 1-3 -- kill storm, server restart, dropped and stalled connections -- run
three OS processes of one app with ``app.main()`` on one backend while a driver kills
them, crashes and restarts the database server, or cuts, stalls and slows their
connections through a TCP proxy. Every process keeps an append-only log of what it
executed and of every lease operation it made; a checker then reads the logs and the
store's final state and proves that no run executed twice and none was lost:

* :mod:`chaos.log` -- the per-process log;
* :mod:`chaos.workload` -- the app the processes run, its set-up, the final state;
* :mod:`chaos.worker` -- the process (``python -m chaos.worker CONFIG``);
* :mod:`chaos.check` -- the checker;
* :mod:`chaos.stores` -- fresh stores on the shared servers, and private servers;
* :mod:`chaos.proxy` -- the loopback TCP proxy the driver controls;
* :mod:`chaos.driver` -- one scenario end to end;
* ``test_chaos.py`` (the short form), ``test_check.py`` (the checker itself) and
  ``test_regressions.py`` (minimal reproductions of the bugs the scenarios found).

The other modules here (start-up storm, clock skew, hostile input, overload) are
scenarios 4-7; see their own docstrings.
"""
