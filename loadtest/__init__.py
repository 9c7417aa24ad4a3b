"""Load generators for scorecast: connection storms and delivery checks.

Storms (``scorecast storm``, ``scorecast report``, docs/STORM.md):

- :mod:`loadtest.storm`         the command: worker processes, progress, result
- :mod:`loadtest.storm_settings` its flags, their checks, the workers' plan
- :mod:`loadtest.storm_worker`  one generator process holding many connections
- :mod:`loadtest.client`        one lean asyncio WebSocket client connection
- :mod:`loadtest.frames`        sans-I/O WebSocket client core: upgrade and frames
- :mod:`loadtest.tracker`       per-topic positions: gaps, duplicates, steps back (the one checker)
- :mod:`loadtest.zipf`          Zipf topic popularity
- :mod:`loadtest.histogram`     a mergeable log-bucket latency histogram
- :mod:`loadtest.tally`         what one generator process counts
- :mod:`loadtest.results`       worker reports folded into the result document
- :mod:`loadtest.publisher`     test envelopes (one source) and the fixed-rate publisher
- :mod:`loadtest.scrape`        a gateway's ``/metrics`` during a storm
- :mod:`loadtest.procstat`      CPU and memory of process trees and the machine (storm and bench)
- :mod:`loadtest.stack`         the one harness: start gateways, wait for /readyz, stop them
- :mod:`loadtest.report`        HTML with plots from a result
- ``loadtest/storm_stack.sh``   nats-server + gateway + storm + report, in one go

locust: ``loadtest/locustfile.py`` (the user) and ``loadtest/locust_storm.py``
(the storm shape), run with ``locust -f``.

The side-by-side benchmark (``scorecast bench``, docs/BENCHMARKS.md):

- :mod:`loadtest.bench`           the command line
- :mod:`loadtest.bench_run`       one run: backbone, generators, each scenario per server
- :mod:`loadtest.bench_scenarios` hot match, many matches, idle, storm
- :mod:`loadtest.bench_clients`   the load generator for all three protocols
- :mod:`loadtest.bench_fleet`     generator processes, one per 12,000 connections
- :mod:`loadtest.bench_servers`   the servers under test and the NATS backbone
- :mod:`loadtest.bench_naive`     the naive ``websockets.broadcast()`` server
- :mod:`loadtest.bench_floor`     the floor: one pre-built frame written per client per event
- :mod:`loadtest.bench_publish`, :mod:`loadtest.bench_report`,
  :mod:`loadtest.bench_config`
"""
