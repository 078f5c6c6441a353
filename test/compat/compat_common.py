"""Shared plumbing for the Python compatibility clients (psycopg 2 and 3).

Each client runs the steps in order and prints one JSON line per step:
  {"step": id, "status": "ok" | "error" | "na", "observed": {...}, "error": {...}, "reason": str}
The tap test (test/compat.test.ts) decides pass or fail from the observed values.
"""
import json
import os
import sys
import threading
import time
import traceback

ENV = {
    'host': os.environ.get('PGB_HOST', '127.0.0.1'),
    'port': os.environ['PGB_PORT'],
    'user': os.environ['PGB_USER'],
    'password': os.environ['PGB_PASSWORD'],
    'run': os.environ['PGB_RUN'],
    'ca': os.environ['PGB_CA'],
    'cert': os.environ['PGB_CERT'],
    'key': os.environ['PGB_KEY'],
    'cert_user': os.environ['PGB_CERT_USER'],
}

# The statements the prepared-statement steps use carry a marker naming the run, so a step
# can find its own in pg_prepared_statements (where, in transaction mode, statements of
# earlier clients may remain) without the checking query matching itself.
PREP_MARKER = '/*compat_prep_marker %s*/' % ENV['run']
PREP_CHECK = ("SELECT count(*)::int, string_agg(name, ',') FROM pg_prepared_statements "
              "WHERE statement LIKE '%%' || 'compat' || '_prep_' || 'marker ' || '%s' || '%%'" % ENV['run'])
FREE_MARKER = '/*compat_free_marker %s*/' % ENV['run']
FREE_CHECK = ("SELECT count(*)::int FROM pg_prepared_statements "
              "WHERE statement LIKE '%%' || 'compat' || '_free_' || 'marker ' || '%s' || '%%'" % ENV['run'])


class NotApplicable(Exception):
    pass


def emit(obj):
    sys.stdout.write(json.dumps(obj, default=str) + '\n')
    sys.stdout.flush()


def conninfo(**extra):
    base = {
        'host': ENV['host'], 'port': ENV['port'], 'dbname': 'postgres', 'user': ENV['user'],
        'password': ENV['password'], 'sslmode': 'require', 'connect_timeout': '10',
        'application_name': 'compat-' + ENV['run'],
    }
    base.update(extra)
    return ' '.join("%s='%s'" % (k, str(v).replace('\\', '\\\\').replace("'", "\\'")) for k, v in base.items() if v is not None)


def run_steps(steps, sqlstate_of):
    """steps: list of (id, fn); fn returns the observed dict or raises."""
    for step_id, fn in steps:
        started = time.monotonic()
        try:
            observed = fn()
            emit({'step': step_id, 'status': 'ok', 'observed': observed,
                  'ms': round((time.monotonic() - started) * 1000)})
        except NotApplicable as e:
            emit({'step': step_id, 'status': 'na', 'reason': str(e)})
        except Exception as e:  # noqa: BLE001 - every failure is reported, never raised
            emit({'step': step_id, 'status': 'error',
                  'error': {'sqlstate': sqlstate_of(e), 'message': str(e).strip(), 'type': type(e).__name__,
                            'trace': traceback.format_exc()[-1500:]},
                  'ms': round((time.monotonic() - started) * 1000)})


def cancel_step(conn, execute, fetch_one, error, sqlstate_of):
    """`SELECT pg_sleep(10)` cancelled after 0.5 s by conn.cancel() from another thread, then
    `SELECT 1` on the same connection. The same for both drivers; they differ only in how
    a statement runs (`execute`, `fetch_one`), their error class and its SQLSTATE field."""
    at = {}

    def do_cancel():
        at['t'] = time.monotonic()
        conn.cancel()

    timer = threading.Timer(0.5, do_cancel)
    start = time.monotonic()
    timer.start()
    sqlstate = None
    try:
        execute(conn, 'SELECT pg_sleep(10)')
    except error as e:
        sqlstate = sqlstate_of(e)
    end = time.monotonic()
    timer.cancel()
    return {'sqlstate': sqlstate, 'total_ms': round((end - start) * 1000),
            'after_cancel_ms': round((end - at['t']) * 1000) if 't' in at else None, 'after': fetch_one(conn, 'SELECT 1')[0],
            'note': 'connection.cancel() from another thread'}
