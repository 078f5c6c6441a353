"""psycopg 3 through pgbastion: every step of the compatibility matrix (see compat_common)."""
import sys
import time

sys.path.insert(0, __import__('os').path.dirname(__file__))
import psycopg  # noqa: E402
from compat_common import ENV, FREE_CHECK, FREE_MARKER, PREP_CHECK, PREP_MARKER, cancel_step, conninfo, run_steps  # noqa: E402

RUN = ENV['run']
S = {}


def connect(**extra):
    return psycopg.connect(conninfo(**extra), autocommit=True)


def one(conn, sql, params=None):
    return conn.execute(sql, params).fetchone()


def tls_scram_login():
    c = S['c'] = connect()
    return {'current_user': one(c, 'SELECT current_user')[0], 'ssl': bool(c.pgconn.ssl_in_use),
            'driver': 'psycopg %s, libpq %s' % (psycopg.__version__, psycopg.pq.version())}


def cert_login():
    c = connect(user=ENV['cert_user'], password=None, host='localhost', hostaddr='127.0.0.1', sslmode='verify-full',
                sslrootcert=ENV['ca'], sslcert=ENV['cert'], sslkey=ENV['key'])
    try:
        row = one(c, "SELECT current_user, current_setting('app.tenant_id')")
        return {'current_user': row[0], 'tenant': row[1], 'ssl': bool(c.pgconn.ssl_in_use)}
    finally:
        c.close()


def simple_query():
    row = one(S['c'], "SELECT 1 + 1, 'hello'")
    return {'value': row[0], 'text': row[1], 'note': 'simple protocol (no parameters)'}


def param_query():
    row = one(S['c'], "SELECT %s::int + 1, %s::text || '-ok'", (41, 'wörld'))
    return {'value': row[0], 'text': row[1], 'note': 'extended protocol, server-side parameters'}


def prepared_repeat():
    p = connect()
    try:
        sql = "SELECT " + PREP_MARKER + " %s::int * 2, current_setting('app.tenant_id'), pg_backend_pid()"
        n, correct, backends, prepared, names = 25, 0, set(), 0, set()
        for i in range(n):
            with p.transaction():
                row = p.execute(sql, (i,), prepare=True).fetchone()
                if row[0] == 2 * i and row[1] == 'a':
                    correct += 1
                backends.add(row[2])
                cnt, nm = one(p, PREP_CHECK)
                prepared += 1 if cnt > 0 else 0
                names.update((nm or '').split(',') if nm else [])
        return {'iterations': n, 'correct': correct, 'backends': len(backends), 'server_prepared': prepared == n, 'prepared_in': prepared,
                'names': sorted(names), 'note': 'execute(..., prepare=True), one transaction each'}
    finally:
        p.close()


def prepared_free():
    """psycopg frees a prepared statement when its cache overflows: DEALLOCATE <name>."""
    f = connect()
    try:
        f.prepared_max = 1
        sql = 'SELECT ' + FREE_MARKER + ' %s::int'
        for i in range(2):
            f.execute(sql, (i,), prepare=True)
        free_sqlstate = check_sqlstate = remaining = None
        with f.transaction():
            f.execute(sql, (3,), prepare=True)
            try:
                # Preparing another statement evicts the first one from the cache of one.
                f.execute('SELECT %s::int + 1', (1,), prepare=True)
            except psycopg.Error as e:
                free_sqlstate = '%s %s' % (e.sqlstate, str(e).strip())
            try:
                remaining = one(f, FREE_CHECK)[0]
            except psycopg.Error as e:
                check_sqlstate = e.sqlstate
            if free_sqlstate or check_sqlstate:
                raise psycopg.Rollback()
        return {'free_error': free_sqlstate, 'check_sqlstate': check_sqlstate, 'remaining': remaining,
                'note': 'evicted from the prepared-statement cache (prepared_max=1): DEALLOCATE <name>'}
    finally:
        f.close()


def count_items(c):
    return one(c, 'SELECT count(*)::int FROM compat_items WHERE run = %s', (RUN,))[0]


def tx_commit():
    c = S['c']
    with c.transaction():
        c.execute("INSERT INTO compat_items (run, k, v) VALUES (%s, 1, 'one'), (%s, 2, 'two')", (RUN, RUN))
    return {'count': count_items(c)}


def tx_rollback():
    c = S['c']
    before = count_items(c)
    inside = None
    with c.transaction():
        c.execute("INSERT INTO compat_items (run, k, v) VALUES (%s, 3, 'three')", (RUN,))
        inside = count_items(c)
        raise psycopg.Rollback()
    return {'before': before, 'inside': inside, 'after': count_items(c)}


def error_recovery():
    c = S['c']
    first = in_failed = None
    try:
        c.execute('SELECT 1/0')
    except psycopg.Error as e:
        first = e.sqlstate
    with c.transaction():
        try:
            c.execute('SELECT 1/0')
        except psycopg.Error:
            pass
        try:
            c.execute('SELECT 1')
        except psycopg.Error as e:
            in_failed = e.sqlstate
        raise psycopg.Rollback()
    return {'sqlstate': first, 'in_failed_tx': in_failed, 'after': one(c, 'SELECT 1')[0]}


def copy_in():
    c = S['c']
    with c.cursor() as cur:
        with cur.copy('COPY compat_copy (run, n, t) FROM STDIN') as cp:
            for i in range(1, 1001):
                cp.write_row((RUN, i, 't%d' % i))
    row = one(c, 'SELECT count(*)::int, sum(n)::int FROM compat_copy WHERE run = %s', (RUN,))
    return {'count': row[0], 'sum': row[1]}


def copy_out():
    buf = bytearray()
    with S['c'].cursor() as cur:
        with cur.copy("COPY (SELECT g, 'x' || g FROM generate_series(1, 1000) g) TO STDOUT") as cp:
            for data in cp:
                buf += data
    lines = bytes(buf).decode().splitlines()
    return {'lines': len(lines), 'first': lines[0] if lines else None, 'last': lines[-1] if lines else None}


def large_result():
    rows = S['c'].execute('SELECT g FROM generate_series(1, 100000) g').fetchall()
    return {'rows': len(rows), 'sum': sum(r[0] for r in rows)}


def cancel():
    return cancel_step(S['c'], lambda c, sql: c.execute(sql), one, psycopg.Error, lambda e: e.sqlstate)


def listen_notify():
    listener, notifier = connect(), connect()
    try:
        got = []
        listener.add_notify_handler(got.append)
        channel = 'compat_' + RUN
        listener.execute('LISTEN ' + channel)
        notifier.execute("NOTIFY %s, 'hello-%s'" % (channel, RUN))
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            listener.execute('SELECT 1')
            time.sleep(0.05)
        return {'channel': got[0].channel if got else None, 'payload': got[0].payload if got else None}
    finally:
        listener.close()
        notifier.close()


def rls_state(c):
    tenant = one(c, "SELECT current_setting('app.tenant_id')")[0]
    rows = c.execute('SELECT tenant FROM compat_rls').fetchall()
    return tenant, sorted({r[0] for r in rows}), len(rows)


def pinned_rls():
    tenant, tenants, rows = rls_state(S['c'])
    return {'tenant': tenant, 'tenants': tenants, 'rows': rows}


def tamper_refused():
    c = S['c']
    sqlstate = message = param_sqlstate = None
    try:
        c.execute("SET app.tenant_id = 'x'")
    except psycopg.Error as e:
        sqlstate, message = e.sqlstate, str(e).strip()
    try:
        c.execute("SELECT set_config('app.tenant_id', %s, false)", ('x',))
    except psycopg.Error as e:
        param_sqlstate = e.sqlstate
    tenant, tenants, rows = rls_state(c)
    return {'sqlstate': sqlstate, 'message': message, 'sqlstate_param': param_sqlstate, 'tenant_after': tenant,
            'tenants_after': tenants, 'rows_after': rows}


run_steps([
    ('tls_scram_login', tls_scram_login), ('cert_login', cert_login), ('simple_query', simple_query),
    ('param_query', param_query), ('prepared_repeat', prepared_repeat), ('prepared_free', prepared_free), ('tx_commit', tx_commit),
    ('tx_rollback', tx_rollback), ('error_recovery', error_recovery), ('copy_in', copy_in), ('copy_out', copy_out),
    ('large_result', large_result), ('cancel', cancel), ('listen_notify', listen_notify), ('pinned_rls', pinned_rls),
    ('tamper_refused', tamper_refused),
], lambda e: getattr(e, 'sqlstate', None))
if 'c' in S:
    S['c'].close()
