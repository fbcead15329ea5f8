"""make bench, in modules: common (settings, spawn, chains), floor, workloads, dnsname,
replay (and strace), report, plot. The driver is bench/bench.py."""
