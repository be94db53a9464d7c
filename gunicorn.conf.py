"""gunicorn settings used by `make run` (and by the benchmarks, so they measure what runs)."""
import os
import shutil
import tempfile

bind = f"{os.environ.get('PORTCULLIS_HOST', '127.0.0.1')}:{os.environ.get('PORT', '8080')}"
# Threads, not processes, by default: one process keeps the in-memory rate-limit budgets and
# caches consistent and suits SQLite. Raise PORTCULLIS_WORKERS with PostgreSQL + REDIS_URL.
workers = int(os.environ.get("PORTCULLIS_WORKERS", "1"))
worker_class = "gthread"
# Calls get PORTCULLIS_THREADS threads; GET /mcp streams (each holds a thread while open) get a
# budget of their own on top, PORTCULLIS_MAX_STREAMS, enforced by the app (app/mcp/streams.py):
# open streams never take the calls' threads (README "Serving model").
threads = int(os.environ.get("PORTCULLIS_THREADS", "8")) + int(os.environ.get("PORTCULLIS_MAX_STREAMS", "256"))
timeout = 120
graceful_timeout = 20
keepalive = 15
# Several instances (and the test suite's) may run side by side: no shared control socket.
control_socket_disable = True
accesslog = "-"
# The access log never shows query strings: a client may put a key in ?key=... . Each line names
# the request id (X-Request-Id); with PORTCULLIS_LOG_FORMAT=json every line is one JSON object.
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms rid=%({x-request-id}o)s'
logger_class = "logformat.GunicornLogger"  # outside the app package: the master does not import the app

# Metrics (app/metrics.py): every worker writes its values to files in one folder, a scrape adds
# them up. Set before any worker imports prometheus_client; a folder of our own unless given.
_OWN_METRICS_DIR = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
if _OWN_METRICS_DIR:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="portcullis-metrics-")


def on_starting(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):  # values of an earlier run are not this run's
        if name.endswith(".db"):
            os.unlink(os.path.join(folder, name))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _OWN_METRICS_DIR:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
