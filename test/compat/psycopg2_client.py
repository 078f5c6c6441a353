"""psycopg2 through pgbastion: every step of the compatibility matrix (see compat_common).

psycopg2 sends everything with the simple query protocol (parameters are interpolated on the
client) and has no protocol-level prepared statements: the prepared-statement step uses SQL
PREPARE / EXECUTE, which makes the client sticky to one server connection in transaction mode.
"""
import io
import os
import select
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402
from compat_common import ENV, FREE_CHECK, FREE_MARKER, PREP_CHECK, PREP_MARKER, cancel_step, conninfo, run_steps  # noqa: E402

RUN = ENV['run']
S = {}


def connect(autocommit=True, **extra):
    conn = psycopg2.connect(conninfo(**extra))
    conn.autocommit = autocommit
    return conn


def one(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()


def run(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)


def tls_scram_login():
    c = S['c'] = connect()
    return {'current_user': one(c, 'SELECT current_user')[0], 'ssl': bool(c.info.ssl_in_use),
            'driver': 'psycopg2 %s, libpq %s' % (psycopg2.__version__.split(' ')[0], psycopg2.extensions.libpq_version())}


def cert_login():
    c = connect(user=ENV['cert_user'], password=None, host='localhost', hostaddr='127.0.0.1', sslmode='verify-full',
                sslrootcert=ENV['ca'], sslcert=ENV['cert'], sslkey=ENV['key'])
    try:
        row = one(c, "SELECT current_user, current_setting('app.tenant_id')")
        return {'current_user': row[0], 'tenant': row[1], 'ssl': bool(c.info.ssl_in_use)}
    finally:
        c.close()


def simple_query():
    row = one(S['c'], "SELECT 1 + 1, 'hello'")
    return {'value': row[0], 'text': row[1]}


def param_query():
    row = one(S['c'], "SELECT %s::int + 1, %s::text || '-ok'", (41, 'wörld'))
    return {'value': row[0], 'text': row[1], 'note': 'parameters interpolated by psycopg2, simple protocol'}


def prepared_repeat():
    p = connect(autocommit=False)
    try:
        run(p, "PREPARE compat_p (int) AS SELECT " + PREP_MARKER + " $1 * 2, current_setting('app.tenant_id'), pg_backend_pid()")
        p.commit()
        n, correct, backends, prepared, names = 25, 0, set(), 0, set()
        for i in range(n):
            row = one(p, 'EXECUTE compat_p (%s)', (i,))
            if row[0] == 2 * i and row[1] == 'a':
                correct += 1
            backends.add(row[2])
            cnt, nm = one(p, PREP_CHECK)
            prepared += 1 if cnt > 0 else 0
            names.update(nm.split(',') if nm else [])
            p.commit()
        return {'iterations': n, 'correct': correct, 'backends': len(backends), 'server_prepared': prepared == n,
                'prepared_in': prepared, 'names': sorted(names),
                'note': 'SQL PREPARE/EXECUTE (psycopg2 has no protocol-level prepared statements); sticky in transaction mode'}
    finally:
        p.close()


def prepared_free():
    """psycopg2 statements are SQL PREPAREd, and freed with SQL DEALLOCATE."""
    f = connect(autocommit=False)
    try:
        run(f, 'PREPARE compat_f (int) AS SELECT ' + FREE_MARKER + ' $1')
        run(f, 'EXECUTE compat_f (1)')
        f.commit()
        free_error = check_sqlstate = remaining = None
        run(f, 'EXECUTE compat_f (2)')
        try:
            run(f, 'DEALLOCATE compat_f')
        except psycopg2.Error as e:
            free_error = '%s %s' % (e.pgcode, str(e).strip())
        try:
            remaining = one(f, FREE_CHECK)[0]
        except psycopg2.Error as e:
            check_sqlstate = e.pgcode
        f.commit()
        return {'free_error': free_error, 'check_sqlstate': check_sqlstate, 'remaining': remaining,
                'note': 'SQL DEALLOCATE of a SQL PREPAREd statement'}
    finally:
        f.close()


def count_items(c):
    return one(c, 'SELECT count(*)::int FROM compat_items WHERE run = %s', (RUN,))[0]


def tx_commit():
    c = S['c']
    c.autocommit = False
    try:
        run(c, "INSERT INTO compat_items (run, k, v) VALUES (%s, 1, 'one'), (%s, 2, 'two')", (RUN, RUN))
        c.commit()
    finally:
        c.autocommit = True
    return {'count': count_items(c)}


def tx_rollback():
    c = S['c']
    before = count_items(c)
    c.autocommit = False
    try:
        run(c, "INSERT INTO compat_items (run, k, v) VALUES (%s, 3, 'three')", (RUN,))
        inside = count_items(c)
        c.rollback()
    finally:
        c.autocommit = True
    return {'before': before, 'inside': inside, 'after': count_items(c)}


def error_recovery():
    c = S['c']
    first = in_failed = None
    try:
        run(c, 'SELECT 1/0')
    except psycopg2.Error as e:
        first = e.pgcode
    c.autocommit = False
    try:
        try:
            run(c, 'SELECT 1/0')
        except psycopg2.Error:
            pass
        try:
            run(c, 'SELECT 1')
        except psycopg2.Error as e:
            in_failed = e.pgcode
        c.rollback()
    finally:
        c.autocommit = True
    return {'sqlstate': first, 'in_failed_tx': in_failed, 'after': one(c, 'SELECT 1')[0]}


def copy_in():
    c = S['c']
    data = ''.join('%s\t%d\tt%d\n' % (RUN, i, i) for i in range(1, 1001))
    with c.cursor() as cur:
        cur.copy_expert('COPY compat_copy (run, n, t) FROM STDIN', io.StringIO(data))
    row = one(c, 'SELECT count(*)::int, sum(n)::int FROM compat_copy WHERE run = %s', (RUN,))
    return {'count': row[0], 'sum': row[1]}


def copy_out():
    buf = io.StringIO()
    with S['c'].cursor() as cur:
        cur.copy_expert("COPY (SELECT g, 'x' || g FROM generate_series(1, 1000) g) TO STDOUT", buf)
    lines = buf.getvalue().splitlines()
    return {'lines': len(lines), 'first': lines[0] if lines else None, 'last': lines[-1] if lines else None}


def large_result():
    with S['c'].cursor() as cur:
        cur.execute('SELECT g FROM generate_series(1, 100000) g')
        rows = cur.fetchall()
    return {'rows': len(rows), 'sum': sum(r[0] for r in rows)}


def cancel():
    return cancel_step(S['c'], run, one, psycopg2.Error, lambda e: e.pgcode)


def listen_notify():
    listener, notifier = connect(), connect()
    try:
        channel = 'compat_' + RUN
        run(listener, 'LISTEN ' + channel)
        run(notifier, "NOTIFY %s, 'hello-%s'" % (channel, RUN))
        deadline = time.monotonic() + 5
        while not listener.notifies and time.monotonic() < deadline:
            select.select([listener], [], [], 0.2)
            listener.poll()
        got = listener.notifies[0] if listener.notifies else None
        return {'channel': got.channel if got else None, 'payload': got.payload if got else None}
    finally:
        listener.close()
        notifier.close()


def rls_state(c):
    tenant = one(c, "SELECT current_setting('app.tenant_id')")[0]
    with c.cursor() as cur:
        cur.execute('SELECT tenant FROM compat_rls')
        rows = cur.fetchall()
    return tenant, sorted({r[0] for r in rows}), len(rows)


def pinned_rls():
    tenant, tenants, rows = rls_state(S['c'])
    return {'tenant': tenant, 'tenants': tenants, 'rows': rows}


def tamper_refused():
    c = S['c']
    sqlstate = message = param_sqlstate = None
    try:
        run(c, "SET app.tenant_id = 'x'")
    except psycopg2.Error as e:
        sqlstate, message = e.pgcode, str(e).strip()
    try:
        run(c, "SELECT set_config('app.tenant_id', %s, false)", ('x',))
    except psycopg2.Error as e:
        param_sqlstate = e.pgcode
    tenant, tenants, rows = rls_state(c)
    return {'sqlstate': sqlstate, 'message': message, 'sqlstate_param': param_sqlstate, 'tenant_after': tenant,
            'tenants_after': tenants, 'rows_after': rows}


run_steps([
    ('tls_scram_login', tls_scram_login), ('cert_login', cert_login), ('simple_query', simple_query),
    ('param_query', param_query), ('prepared_repeat', prepared_repeat), ('prepared_free', prepared_free), ('tx_commit', tx_commit),
    ('tx_rollback', tx_rollback), ('error_recovery', error_recovery), ('copy_in', copy_in), ('copy_out', copy_out),
    ('large_result', large_result), ('cancel', cancel), ('listen_notify', listen_notify), ('pinned_rls', pinned_rls),
    ('tamper_refused', tamper_refused),
], lambda e: getattr(e, 'pgcode', None))
if 'c' in S:
    S['c'].close()
