"""gunicorn settings used by `make run` (and by the benchmarks, so they measure what runs)."""
import os

bind = f"{os.environ.get('PORTCULLIS_HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
# Threads, not processes, by default: one process keeps the in-memory rate-limit budgets and
# caches consistent and suits SQLite. Raise PORTCULLIS_WORKERS with PostgreSQL + REDIS_URL.
workers = int(os.environ.get("PORTCULLIS_WORKERS", "1"))
worker_class = "gthread"
threads = int(os.environ.get("PORTCULLIS_THREADS", "8"))
timeout = 120
graceful_timeout = 20
keepalive = 15
# Several instances (and the test suite's) may run side by side: no shared control socket.
control_socket_disable = True
accesslog = "-"
# The access log never shows query strings: a client may put a key in ?key=... .
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'
